"""Parquet shards in the layout of Hugging Face's `ILSVRC/imagenet-1k`, read by row.

    DIR/data/train-00000-of-00004.parquet ...   columns image {bytes, path} and label (int64)
    DIR/data/validation-00000-of-00001.parquet  the held-out split

A row's image is its `bytes`; a row with a path and no bytes (what `datasets` writes from image
files) is the file at that path, as `datasets` reads it: a relative path is looked up beside the
parquet file, then in the working directory. A path that does not open is a bad sample.

Class names come from the ClassLabel feature that the `datasets` library records in each
file's schema metadata, under the "huggingface" key:
`{"info": {"features": {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names":
[...]}}}}`. pyarrow (the `imagenet` extra) reads the files.

Parquet's unit of reading is a row group. `resnext pack` writes one row per row group,
uncompressed: a row is then one positioned read of its column chunk (data/pages.py decodes the
page), 0.014 ms against 0.08-0.2 ms through pyarrow's `read_row_group`. Other files are read
through pyarrow, a whole row group per image in a shuffled epoch (pack them again for training);
each process keeps its last row group, so evaluation, which reads in order, reads each once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shlex
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from pathlib import Path

import numpy as np

from resnext.data.bad_images import BadImages
from resnext.data.index import indexed_scan
from resnext.data.isolated import scan_in_child
from resnext.data.pages import PageError, plain_value
from resnext.data.records import OpenFiles, ShardRecords, open_fd
from resnext.data.samples import Scan
from resnext.extras import require

log = logging.getLogger(__name__)
# Off while `pack` reads the files: its advice would be to run what is running.
ADVISE_PACK: ContextVar[bool] = ContextVar("advise_pack", default=True)

VAL = "validation"  # the held-out split's name
_OPEN_TABLES = 16  # pyarrow readers of foreign files kept open per process
_SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.parquet$")


def pyarrow_parquet():
    """pyarrow.parquet, or the one-line hint naming the extra."""
    require("pyarrow", "imagenet", "parquet data")
    import pyarrow.parquet as pq

    return pq


class ParquetRecords(ShardRecords):
    """Rows of parquet files: file index, row in the file, and each file's row-group starts.

    Where a file has one row per row group, uncompressed (what `pack` writes), `chunks[f]`
    holds each row's image column chunk (offset, size) and `max_def` the column's maximum
    definition level: a row is then one positioned read (data/pages.py); else pyarrow reads it.
    """

    def __init__(self, files: list[Path], file: np.ndarray, row: np.ndarray,
                 starts: list[np.ndarray], chunks: list[np.ndarray | None], max_def: list[int]
                 ) -> None:  # fmt: skip
        self.files, self.file, self.row, self.starts = files, file, row, starts
        self.chunks, self.max_def = chunks, max_def
        self.handles = OpenFiles(open_fd)  # every file, as the open-file limit allows
        # pyarrow's readers of foreign files (each holds its footer in memory), a few at a time;
        # local[COLUMN]: (file, row group, the column's values) of the last row group read
        self.tables = OpenFiles(read_footer, _OPEN_TABLES)

    def __len__(self) -> int:
        return len(self.row)

    def name(self, i: int) -> str:
        return f"{self.files[self.file[i]]}:{self.row[i]}"

    def read(self, i: int) -> bytes:
        f, row = int(self.file[i]), int(self.row[i])
        value = self._direct(f, row) if self.chunks[f] is not None else self._by_pyarrow(f, row)
        return value if value is not None else self._from_path(f, row)

    def _from_path(self, f: int, row: int) -> bytes:
        """A row that holds a path and no bytes (`datasets` writes such rows from image files,
        and reads them so): the file at the path, a relative one found beside the parquet
        file, else in the working directory."""
        path = self._column(f, row, "image.path")
        if path is None:
            raise OSError("no image bytes in this row, and no path")
        found = Path(path)
        if not found.is_absolute() and (self.files[f].parent / found).exists():
            found = self.files[f].parent / found
        try:
            return found.read_bytes()
        except OSError as e:
            raise OSError(f"no image bytes in this row, and its path {path} does not open "
                          f"({e.strerror or type(e).__name__})") from None  # fmt: skip

    def take(self, keep: list[int]) -> ParquetRecords:
        return ParquetRecords(self.files, self.file[keep], self.row[keep], self.starts,
                              self.chunks, self.max_def)  # fmt: skip

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the index (data/index.py) keeps; `from_arrays` with the files reads it back.
        Per-file arrays are concatenated, with each file's count (-1: no direct chunks)."""
        chunks = [c for c in self.chunks if c is not None]
        return {
            "file": self.file, "row": self.row, "max_def": np.array(self.max_def, dtype=np.int64),
            "starts": np.concatenate(self.starts) if self.starts else np.zeros(0, np.int64),
            "starts_count": np.array([len(s) for s in self.starts], dtype=np.int64),
            "chunks": np.concatenate(chunks) if chunks else np.zeros((0, 2), np.int64),
            "chunks_count": np.array([-1 if c is None else len(c) for c in self.chunks],
                                     dtype=np.int64),
        }  # fmt: skip

    @classmethod
    def from_arrays(cls, files: list[Path], a: dict[str, np.ndarray]) -> ParquetRecords:
        starts = np.split(a["starts"], np.cumsum(a["starts_count"])[:-1])
        sizes = np.maximum(a["chunks_count"], 0)
        pieces = np.split(a["chunks"], np.cumsum(sizes)[:-1])
        chunks = [None if n < 0 else c for n, c in zip(a["chunks_count"], pieces)]
        return cls(files, a["file"], a["row"], starts, chunks, [int(m) for m in a["max_def"]])

    def _direct(self, f: int, row: int) -> bytes | None:
        offset, size = (int(v) for v in self.chunks[f][row])
        chunk = os.pread(self.handles.get(self.files[f]), size, offset)
        try:
            return plain_value(chunk, self.max_def[f])
        except PageError:  # a layout pages.py does not decode: pyarrow does
            return self._by_pyarrow(f, row)

    def _by_pyarrow(self, f: int, row: int) -> bytes | None:
        return self._column(f, row, "image.bytes")

    def _column(self, f: int, row: int, column: str) -> bytes | str | None:
        """`column` ("image.bytes", "image.path") of a row, read by pyarrow a row group at a
        time; each process keeps the last row group read of each column."""
        g = int(np.searchsorted(self.starts[f], row, side="right")) - 1
        group = self.tables.local.get(column)
        if group is None or group[:2] != (f, g):
            try:
                table = self.tables.get(self.files[f]).read_row_group(
                    g,
                    columns=[column],
                    use_threads=False,  # a worker is one core
                )
            except Exception as e:  # noqa: BLE001 - pyarrow's errors are not OSErrors
                raise OSError(f"cannot read row group {g}: {e}") from None
            leaf = column.split(".")[1]
            group = (f, g, table.column(0).combine_chunks().field(leaf))
            self.tables.local[column] = group
        values, at = group[2], row - int(self.starts[f][g])
        if at >= len(values):  # the row group holds fewer rows than its metadata counts
            raise OSError(f"row group {g} holds {len(values)} rows, fewer than its metadata counts")
        return values[at].as_py()


def read_footer(path: Path):
    """A pyarrow ParquetFile of a file: its footer read (where a crafted footer can abort the
    process: the index build runs in a child, data/isolated.py)."""
    return pyarrow_parquet().ParquetFile(path)


def chunk_index(pf) -> tuple[np.ndarray | None, int]:
    """Each row's `image.bytes` chunk (offset, size) where every row group is one uncompressed
    row without a dictionary (else None), and the column's maximum definition level."""
    leaf = [pf.schema.column(j).path for j in range(len(pf.schema))].index("image.bytes")
    max_def = pf.schema.column(leaf).max_definition_level
    md = pf.metadata
    chunks = np.empty((md.num_row_groups, 2), dtype=np.int64)
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        c = group.column(leaf)
        if group.num_rows != 1 or c.has_dictionary_page or c.compression != "UNCOMPRESSED":
            return None, max_def  # found at the first group of a foreign file
        chunks[g] = (c.data_page_offset, c.total_compressed_size)
    return chunks, max_def


def parquet_files(root: str, split: str) -> list[Path]:
    """`root/data/SPLIT-NNNNN-of-NNNNN.parquet` (or directly in `root`), all of them present."""
    base = Path(root) / "data" if (Path(root) / "data").is_dir() else Path(root)
    if not Path(root).is_dir():
        raise ValueError(f"no parquet data in {root!r} ({root} does not exist)")
    files = sorted(p for p in base.glob(f"{split}-*.parquet"))
    if not files:
        raise ValueError(
            f"no {split} parquet files in {base} (expected {split}-NNNNN-of-NNNNN.parquet)"
        )
    named = [m for m in map(lambda p: _SHARD.match(p.name), files) if m]
    if named and len(named) == len(files):
        count = int(named[0]["count"])
        width = len(named[0]["index"])
        have = {int(m["index"]) for m in named}
        for k in range(count):
            if k not in have:
                missing = base / f"{split}-{k:0{width}d}-of-{named[0]['count']}.parquet"
                raise ValueError(f"parquet file {missing} is missing ({count} {split} files named)")
    return files


def splits(root: str) -> list[str]:
    """ "train", then the held-out splits present in `root` ("validation", "test")."""
    base = Path(root) / "data" if (Path(root) / "data").is_dir() else Path(root)
    return ["train", *(s for s in (VAL, "test") if any(base.glob(f"{s}-*.parquet")))]


def _installed(name: str) -> bool:
    """Whether `name` can be imported, without importing it: a cached index of packed files
    needs no pyarrow in the process (importing it costs about 150 MiB of resident memory)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ValueError, ImportError):  # in sys.modules as None: made unimportable
        return False


def load(root: str, split: str, bad: BadImages) -> Scan:
    """The rows of the `split` parquet files in `root`, from its index (data/index.py) when it
    matches the files, else scanned now (`scan`, in a child process: data/isolated.py) and
    indexed."""
    if not _installed("pyarrow"):  # the one-line hint now, not in a worker at a foreign row
        pyarrow_parquet()
    files = parquet_files(root, split)
    build = partial(scan_in_child, scan, ParquetRecords.from_arrays, files, "parquet file")
    found = indexed_scan("parquet", root, split, bad, files, build, ParquetRecords.from_arrays)
    _warn_foreign(root, split, found.records)
    return found


def _warn_foreign(root: str, split: str, records: ParquetRecords) -> None:
    """Files not in pack's layout are read a row group per image in a shuffled epoch (7.9 ms
    an image for 100-row groups against 0.03 ms packed): say so once per load, with the fix."""
    foreign = [f for f, c in zip(records.files, records.chunks) if c is None]
    if not foreign or not ADVISE_PACK.get():
        return
    out = f"{os.path.normpath(root)}-packed"
    command = shlex.join(["resnext", "pack", "--dataset", "parquet", "--data", root,
                          "--format", "parquet", "--out", out])  # fmt: skip
    log.warning("%d of the %d %s parquet files of %s (%s first) are read a whole row group per "
                "image in a shuffled epoch (slow): pack them once for one read per image: %s",
                len(foreign), len(records.files), split, root, foreign[0], command)  # fmt: skip


def scan(
    root: str, split: str, bad: BadImages, reading: Callable[[int], None] = lambda f: None
) -> Scan:
    """The rows of the `split` ("train", "validation" or "test") parquet files in `root`.

    A missing or unreadable file is a ValueError naming it, before any training; a row
    without a label is a bad image (skipped with a warning, counted). `reading(f)` is told
    each file's index before the file is read.
    """
    files = parquet_files(root, split)
    which, rows, labels, starts, names, chunks, max_def = [], [], [], [], None, [], []
    for f, path in enumerate(files):
        reading(f)
        try:
            pf = read_footer(path)
            _check_columns(pf.schema_arrow, path)
            column = pf.read(columns=["label"]).column(0).to_pylist()
        except (OSError, ValueError, NotImplementedError) as e:  # ArrowInvalid: a ValueError;
            # ArrowNotImplementedError (a schema pyarrow cannot build): a NotImplementedError
            raise ValueError(f"cannot read parquet file {path}: {e}") from None
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        starts.append(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
        index, deepest = chunk_index(pf)
        chunks.append(index)
        max_def.append(deepest)
        names = names or label_names(pf.schema_arrow.metadata)
        unlabelled = []
        for r, y in enumerate(column):
            if y is None or y < 0:
                unlabelled.append(r)
                continue
            which.append(f)
            rows.append(r)
            labels.append(int(y))
        _note_unlabelled(bad, path, unlabelled, column)
        pf.close()
    records = ParquetRecords(files, np.array(which, dtype=np.int32), np.array(rows, dtype=np.int64),
                             starts, chunks, max_def)  # fmt: skip
    classes = [str(n) for n in names] if names else None
    return Scan(records, labels, classes, f"the {split} parquet files of {root}",
                f"no readable rows in the {split} parquet files of {root}",
                "a ClassLabel feature for the label column, as `datasets` writes it")  # fmt: skip


def _note_unlabelled(bad: BadImages, path: Path, rows: list[int], column: list) -> None:
    """Rows without a label (None, or -1 as in ImageNet's test split) are bad images, counted
    one by one but warned about once per file: a whole unlabelled split is 100,000 rows."""
    if not rows:
        return
    first = rows[0]
    why = "no label" if column[first] is None else f"label {column[first]} (unlabelled)"
    bad.note_many([f"{path}:{r}" for r in rows], why,
                  f"{len(rows)} rows without a label in {path} (row {first}: {why})")  # fmt: skip


def _check_columns(schema, path: Path) -> None:
    names = schema.names
    image = schema.field("image").type if "image" in names else None
    has_bytes = (
        image is not None
        and hasattr(image, "get_field_index")
        and (image.get_field_index("bytes") >= 0)
    )
    if not has_bytes or "label" not in names:
        raise ValueError(f"expected columns image {{bytes, path}} and label, found {names}")
    import pyarrow.types as kinds  # there once a file is read

    label = schema.field("label").type
    if not (kinds.is_integer(label) or kinds.is_null(label)):  # null: an unlabelled split
        raise ValueError(
            f"its label column holds {label} values; a label is an integer class index (an "
            "integer column, as `datasets` writes a ClassLabel)"
        )


def label_names(metadata: dict | None) -> list[str] | None:
    """The ClassLabel names `datasets` records for the label column, or None."""
    raw = (metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        label = json.loads(raw)["info"]["features"]["label"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(label, dict) and label.get("_type") == "ClassLabel":
        return list(label.get("names") or []) or None
    return None


def hf_metadata(classes: list[str]) -> dict[bytes, bytes]:
    """Schema metadata that `datasets` reads back as Image and ClassLabel features."""
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(classes), "_type": "ClassLabel"},
    }
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
