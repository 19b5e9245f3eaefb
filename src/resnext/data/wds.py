"""WebDataset tar shards in the layout of timm's `imagenet-1k-wds`, read by random access.

    DIR/_info.json                    {"name", "splits": {split: {"name", "num_samples",
                                       "filenames", "shard_lengths"}}} as timm's reader_wds reads
                                       it; ours adds "classes" (timm ignores keys it does not use)
    DIR/NAME-train-0000.tar ...       samples KEY.jpg (or .png, .webp) + KEY.cls (its label),
                                       or a label in KEY.json (data/wds_labels.py)
    DIR/NAME-validation-0000.tar ...  the held-out split

Each tar's member headers are read once when the set loads (data/tar.py), keeping each image's
offset and size, so that reading a sample is one positioned read (`os.pread`) and batches stay a
function of (seed, epoch, step). Files open lazily in the process that reads (records.OpenFiles).
"""

from __future__ import annotations

import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnext.data.bad_images import BadImages
from resnext.data.images import IMAGE_SUFFIXES
from resnext.data.index import indexed_scan
from resnext.data.records import OpenFiles, ShardRecords, open_fd
from resnext.data.samples import Scan
from resnext.data.tar import TarError, tar_members
from resnext.data.wds_labels import MAX_CLS, MAX_JSON, labels_from, sample_label

log = logging.getLogger(__name__)

INFO = "_info.json"
VAL = "validation"  # the held-out split's name
_IMAGE_EXTS = {s[1:] for s in IMAGE_SUFFIXES}
_SCAN_THREADS = 8


class TarRecords(ShardRecords):
    """Image members of tar shards: shard index, data offset and byte count, and key per record."""

    def __init__(self, shards: list[Path], shard: np.ndarray, offset: np.ndarray,
                 nbytes: np.ndarray, keys: np.ndarray) -> None:  # fmt: skip
        # numpy arrays, not lists of Python objects: forked workers then share the index (no
        # reference counts written, so no copy-on-write of 1.28 M objects per worker).
        self.shards, self.shard, self.offset, self.nbytes = shards, shard, offset, nbytes
        self.keys = keys  # UTF-8 bytes (names that are not UTF-8: their own bytes, surrogateescape)
        self.handles = OpenFiles(open_fd)  # every shard, as the open-file limit allows

    def __len__(self) -> int:
        return len(self.keys)

    def name(self, i: int) -> str:
        return f"{self.shards[self.shard[i]]}:{self.keys[i].decode('utf-8', 'surrogateescape')}"

    def read(self, i: int) -> bytes:
        fd = self.handles.get(self.shards[int(self.shard[i])])
        data = os.pread(fd, int(self.nbytes[i]), int(self.offset[i]))
        if len(data) != self.nbytes[i]:
            raise OSError(f"{self.name(i)}: shard ends inside the image (truncated)")
        return data

    def take(self, keep: list[int]) -> TarRecords:
        return TarRecords(self.shards, self.shard[keep], self.offset[keep], self.nbytes[keep],
                          self.keys[keep])  # fmt: skip

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the index (data/index.py) keeps; `from_arrays` with the shards reads it back."""
        return {
            "shard": self.shard,
            "offset": self.offset,
            "nbytes": self.nbytes,
            "keys": self.keys,
        }

    @classmethod
    def from_arrays(cls, shards: list[Path], a: dict[str, np.ndarray]) -> TarRecords:
        return cls(shards, a["shard"], a["offset"], a["nbytes"], a["keys"])


def load(root: str, split: str, bad: BadImages) -> Scan:
    """The samples of the `split` shards in `root`, from its index (data/index.py) when it
    matches the shards and _info.json, else scanned now (`scan`) and indexed."""
    shards, _ = split_shards(root, split, read_info(root), warn=False)
    info = [Path(root) / INFO] if (Path(root) / INFO).is_file() else []
    found = indexed_scan("wds", root, split, bad, shards, scan, TarRecords.from_arrays, info)
    if found.labels_from:
        log.info("%s: %s", found.source, found.labels_from)
    return found


def scan(root: str, split: str, bad: BadImages) -> Scan:
    """The samples of the `split` ("train", "validation" or "test") shards in `root`.

    A missing or truncated shard is a ValueError naming it, before any training; a sample
    without an image or a usable label is a bad image (skipped with a warning, counted).
    """
    info = read_info(root)
    shards, lengths = split_shards(root, split, info)
    field = info.get("splits", {}).get(split, {}).get("alt_label") or None  # timm's key
    sources: dict[str, int] = {}
    index: list[tuple[int, int, int, str]] = []
    labels: list[int] = []
    # Threads overlap the reads of many shards: on a network file system each header is a
    # round trip, and reading releases the GIL.
    with ThreadPoolExecutor(_SCAN_THREADS) as pool:
        scanned = list(pool.map(lambda p: scan_tar(p, field), shards))
    for s, (path, samples) in enumerate(zip(shards, scanned)):
        if lengths and len(samples) != lengths[s]:
            raise ValueError(
                f"shard {path} holds {len(samples)} samples where {INFO} says {lengths[s]} "
                "(truncated or replaced: download or pack it again)"
            )
        for sample in samples:
            label, where = sample_label(sample.label, sample.meta, field)
            reason = sample.problem or ("no image" if sample.image is None else None)
            reason = reason or (where if label is None else None)
            if reason is not None:
                bad.note(f"{path}:{sample.name}", reason)
                continue
            index.append((s, *sample.image, sample.name))
            labels.append(label)
            sources[where] = sources.get(where, 0) + 1
    _check_count(root, split, info, sum(map(len, scanned)))
    s, off, nbytes, keys = zip(*index) if index else ((), (), (), ())
    records = TarRecords(shards, np.array(s, dtype=np.int32), np.array(off, dtype=np.int64),
                         np.array(nbytes, dtype=np.int64),
                         np.array([k.encode("utf-8", "surrogateescape") for k in keys], dtype=np.bytes_))  # fmt: skip
    return Scan(records, labels, _names(info.get("classes")), f"the {split} shards of {root}",
                f"no readable samples in the {split} shards of {root}",
                f'"classes": [...] in {Path(root) / INFO}',
                labels_from=labels_from(sources) if sources else "")  # fmt: skip


def _check_count(root: str, split: str, info: dict, found: int) -> None:
    """Warn where _info.json's num_samples is not what the shards hold (theirs is used)."""
    claimed = info.get("splits", {}).get(split, {}).get("num_samples")
    if claimed is not None and claimed != found:
        log.warning("%s says the %s split holds %d samples; its shards hold %d (used)",
                    Path(root) / INFO, split, claimed, found)  # fmt: skip


def _names(classes: list | None) -> list[str] | None:
    return [str(n) for n in classes] if classes else None


def read_info(root: str) -> dict:
    """`root/_info.json`, or {} when there is none (the shards are then found by their names)."""
    path = Path(root) / INFO
    if not path.is_file():
        if not Path(root).is_dir():
            raise ValueError(f"no WebDataset shards in {root!r} ({root} does not exist)")
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits", {}), dict):
        raise ValueError(f"{path} is not a dataset info file (expected {{'splits': {{...}}}})")
    classes = info.get("classes")
    if classes is not None and not _list_of(classes, (str, int)):
        raise ValueError(f"{path}: classes is {_shown(classes)}, not a list of class names")
    for split, entry in info.get("splits", {}).items():
        _check_split(entry, f"{path}: splits.{split}")
    return info


def _check_split(entry: object, where: str) -> None:
    """A split entry as timm writes it: filenames, and sample counts that are integers."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is {_shown(entry)}, not {{'filenames': [...], ...}}")
    if not _list_of(entry.get("filenames", []), str):
        raise ValueError(f"{where}.filenames is {_shown(entry['filenames'])}, not a list of names")
    lengths = entry.get("shard_lengths", [])
    if not _list_of(lengths, int) or min(lengths, default=0) < 0:
        raise ValueError(f"{where}.shard_lengths is {_shown(lengths)}, not a list of counts")
    if not isinstance(entry.get("alt_label", ""), str):
        raise ValueError(f"{where}.alt_label is {_shown(entry['alt_label'])}, not a field name")
    count = entry.get("num_samples", 0)
    if not _list_of([count], int) or count < 0:
        raise ValueError(f"{where}.num_samples is {_shown(count)}, not a count")


def _list_of(value: object, kinds: type | tuple[type, ...]) -> bool:
    """A list whose items are all of `kinds` (bool, a JSON true/false, is no int here)."""
    return isinstance(value, list) and all(
        isinstance(v, kinds) and not isinstance(v, bool) for v in value
    )


def _shown(value: object) -> str:
    """A JSON value in a message: its type and the start of its text."""
    text = json.dumps(value)
    return f"a {type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def split_shards(
    root: str, split: str, info: dict, warn: bool = True
) -> tuple[list[Path], list[int]]:
    """The shard files of `split` in order, and their sample counts where _info.json gives them.

    Every shard _info.json lists must exist; without _info.json, `*-SPLIT-*.tar` in name order.
    A count list of another length is warned about (`warn`: once, by the scan).
    """
    base = Path(root)
    entry = info.get("splits", {}).get(split)
    if entry is None:
        shards = sorted(p for p in base.glob("*.tar") if f"-{split}-" in p.name)
        if not shards:
            raise ValueError(f"no {split} shards in {root} (expected NAME-{split}-NNNN.tar)")
        _check_numbering(shards)
        return shards, []
    shards = [base / f for f in entry.get("filenames", [])]
    if not shards:
        raise ValueError(f"{base / INFO} lists no {split} shards")
    for p in shards:
        if not p.is_file():
            raise ValueError(f"shard {p} is missing ({INFO} lists it in the {split} split)")
    lengths = entry.get("shard_lengths", [])
    if lengths and len(lengths) != len(shards) and warn:
        log.warning("%s lists %d shard_lengths for the %d %s shards it names (the shards' own "
                    "counts are used)", base / INFO, len(lengths), len(shards), split)  # fmt: skip
    return shards, lengths if len(lengths) == len(shards) else []


def _check_numbering(shards: list[Path]) -> None:
    """Without _info.json, a gap in NAME-SPLIT-0000, -0001, ... names the missing shard."""
    numbered = [re.fullmatch(r"(.*-)(\d+)\.tar", p.name) for p in shards]
    if not all(numbered) or len({m.group(1) for m in numbered}) != 1:
        return
    have = {int(m.group(2)) for m in numbered}
    width = len(numbered[0].group(2))
    for k in range(max(have) + 1):
        if k not in have:
            name = f"{numbered[0].group(1)}{k:0{width}d}.tar"
            raise ValueError(f"shard {shards[0].parent / name} is missing (the numbering skips it)")


def splits(root: str) -> list[str]:
    """ "train", then the held-out splits present in `root` ("validation", "test": named in
    _info.json or by the shards' names)."""
    info = read_info(root)
    names = {p.name for p in Path(root).glob("*.tar")}
    return ["train", *(s for s in (VAL, "test")
                       if s in info.get("splits", {}) or any(f"-{s}-" in n for n in names))]  # fmt: skip


# webdataset's rule: a member's key is its path up to the first dot of its file name.
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass(slots=True)
class TarSample:
    """One sample of a shard: a run of consecutive members with one key (webdataset's rule).

    `name` is its key, or `KEY#N` for the Nth run of a key seen earlier in the shard (webdataset
    reads that as another sample with the same key); `image` is (offset, size) of its image,
    `label` its .cls bytes, `meta` its .json bytes, `problem` why it cannot be paired (two members of one extension).
    """

    name: str
    image: tuple[int, int] | None = None
    label: bytes | None = None
    meta: bytes | None = None
    problem: str | None = None


def scan_tar(path: Path, field: str | None = None) -> list[TarSample]:
    """The samples of a shard in order, grouped as webdataset groups them: a sample is a run of
    consecutive members with one key; a key met again after another is another sample; two
    members of one key and extension in one run make that sample bad (never a mix).

    A sample's .json is read where its label comes from it: `field` (the split's alt_label) is
    set, or the sample has no .cls. Raises ValueError naming the shard when it is not a tar or
    is truncated.
    """
    samples: list[TarSample] = []
    metas: list[tuple[TarSample, int, int]] = []  # each .json: its sample, offset, size
    runs: dict[str, int] = {}  # key -> runs of members with that key so far
    current, exts = None, set()  # the key of the run being read, and its extensions
    try:
        with open(path, "rb") as f:
            for name, offset, size in tar_members(f, path.stat().st_size):
                found = _KEY.match(name)
                if found is None:
                    continue
                key, ext = found.group(1), found.group(2).lower()
                if key != current:
                    current, runs[key], exts = key, runs.get(key, 0) + 1, set()
                    samples.append(TarSample(key if runs[key] == 1 else f"{key}#{runs[key]}"))
                sample = samples[-1]
                if ext in exts:
                    sample.problem = sample.problem or f"two {key}.{ext} members in one sample"
                    continue
                exts.add(ext)
                if ext in _IMAGE_EXTS and sample.image is None:
                    sample.image = (offset, size)
                elif ext == "cls":
                    f.seek(offset)
                    sample.label = f.read(min(size, MAX_CLS + 1))
                elif ext == "json":
                    metas.append((sample, offset, size))
            for sample, offset, size in metas:
                if field is not None or sample.label is None:
                    f.seek(offset)
                    sample.meta = f.read(min(size, MAX_JSON + 1))
    except TarError as e:
        raise ValueError(f"shard {path} {e} (download or pack it again)") from None
    except OSError as e:
        raise ValueError(f"cannot read shard {path}: {e}") from None
    _note_repeats(path, runs)
    return samples


def _note_repeats(path: Path, runs: dict[str, int]) -> None:
    repeated = [k for k, n in runs.items() if n > 1]
    if repeated:
        log.warning("%s: %d keys (%s first) come back after other members: each run of members "
                    "is a sample of its own (webdataset's rule), named KEY#2, ...", path,
                    len(repeated), repeated[0])  # fmt: skip
