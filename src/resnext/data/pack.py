"""`resnext pack`: a data set written as WebDataset tar shards or as parquet files, once, so that a
cluster's network file system serves a few large files instead of a million small ones.

The encoded images are copied as they are (never re-encoded), in the set's order, so that the
packed set gives the same batches as its source. Each split is written as `train`,
`validation` (a folder's val/) and `test`, with the metadata the other readers of the format
use: `_info.json` for timm's wds reader, the ClassLabel feature for Hugging Face `datasets`.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from resnext.atomic import write_atomic
from resnext.data.bad_images import BAD_IMAGE_ERRORS, NoSamples
from resnext.data.images import IMAGE_SUFFIXES
from resnext.data.samples import ImageSet, common_classes
from resnext.errors import one_line

log = logging.getLogger(__name__)

FORMATS = ("wds", "parquet")
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # folder -> packed


def encoded(data: ImageSet) -> Iterator[tuple[int, bytes, str, str]]:
    """(index, encoded bytes, format suffix, source name) of every readable image of `data`."""
    for i in range(len(data)):
        try:
            source, name = data.open(i)
            raw = Path(source).read_bytes() if isinstance(source, (str, Path)) else source.read()
            with Image.open(io.BytesIO(raw)) as im:  # reads the header only
                kind = (im.format or "").lower()
        except BAD_IMAGE_ERRORS as e:
            data.bad.note(data.name(i), one_line(e))
            continue
        suffix = _suffix(kind, name)
        if suffix is None:
            data.bad.note(data.name(i), f"a {kind or 'unknown'} image: no image suffix to store it")
            continue
        yield i, raw, suffix, name


def _suffix(kind: str, name: str) -> str | None:
    """The member suffix for an image PIL reads as `kind`: one the readers take as an image.
    Camera JPEGs often open as MPO (a JPEG with extra frames): they are JPEGs."""
    ext = {"jpeg": "jpg", "mpo": "jpg", "tiff": "tif"}.get(kind, kind)
    if "." + ext in IMAGE_SUFFIXES:
        return ext
    own = Path(name).suffix.lower()
    return own[1:] if own in IMAGE_SUFFIXES else None


def pack_split(data: ImageSet, fmt: str, out: Path, name: str, split: str, shard_size: int) -> dict:
    """Write `data` as `split` shards of `shard_size` samples; returns its _info.json entry.

    Shards are written as they fill (a shard's images in memory at a time); the parquet names'
    "-of-NNNNN" is known at the end, when the finished files are renamed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    done, lengths, chunk = [], [], []

    def flush() -> None:
        k = len(done)
        if fmt == "wds":
            path = out / f"{name}-{split}-{k:04d}.tar"
        else:
            path = out / "data" / f"{split}-{k:05d}.parquet.unnumbered"
        write_atomic(
            path, lambda f: (_write_tar if fmt == "wds" else _write_parquet)(f, chunk, data)
        )
        done.append(path)
        lengths.append(len(chunk))
        chunk.clear()

    for record in encoded(data):
        chunk.append(record)
        if len(chunk) == shard_size:
            flush()
    if chunk:
        flush()
    if not done:
        raise ValueError(f"no readable images in the {data.split} split to pack")
    if fmt == "parquet":
        final = [
            p.with_name(f"{split}-{k:05d}-of-{len(done):05d}.parquet") for k, p in enumerate(done)
        ]
        for p, q in zip(done, final):
            os.replace(p, q)
        done = final
    log.info("%s: %d images in %d %s files", split, sum(lengths), len(done), fmt)
    return {"name": split, "num_samples": sum(lengths),
            "filenames": [p.relative_to(out).as_posix() for p in done],
            "shard_lengths": lengths}  # fmt: skip


def pack_dataset(
    dataset: str, root: str, fmt: str, out: str, name: str = "", shard_size: int = 1000,
    num_classes: int = 0, **old,
) -> dict[str, dict]:  # fmt: skip
    """Pack every split of a data set (folder, wds or parquet) into `out` as `fmt`, in shards of
    `shard_size` samples (`size=` is its old name); data that records no class names has
    `num_classes` classes (0: as its labels say, datasets.class_names).

    Returns {split: its _info.json entry}. `out` must be new or empty: a packed set is never
    mixed with the files of another.
    """
    if "size" in old:
        warnings.warn("pack_dataset(size=) is now shard_size=", DeprecationWarning, stacklevel=2)
        shard_size = old.pop("size")
    if old:
        raise TypeError(f"pack_dataset() got unexpected arguments {sorted(old)}")
    from resnext.data.datasets import load_dataset, splits_present

    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"--out {out} is not an empty folder (pack writes a new data set)")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if num_classes < 0:
        raise ValueError(f"--num-classes must not be negative, got {num_classes}")
    name = name or Path(root).resolve().name
    sources = []
    for s in splits_present(dataset, root):
        # The held-out splits have the training split's classes, whatever labels they hold.
        count = len(sources[0][1].classes) if sources else num_classes
        try:
            sources.append((s, load_dataset(dataset, root, s, in_memory="no", num_classes=count)))
        except NoSamples as e:  # ImageNet's test split has no labels: nothing to train on
            if s == "train":
                raise
            log.warning("not packing the %s split: %s", s, e)
    classes = sources[0][1].classes
    splits = {}
    for split, data in sources:
        common = common_classes(classes, data.classes)
        if common is None:
            raise ValueError(
                f"the {split} split of {root} has other classes than the {sources[0][0]} split"
            )
        packed = SPLIT_NAMES.get(split, split)
        data = data.replace(classes=common)
        splits[packed] = pack_split(data, fmt, target, name, packed, shard_size)
    if fmt == "wds":
        write_info(target, name, classes, splits)
    return splits


def write_info(out: Path, name: str, classes: list[str], splits: dict[str, dict]) -> None:
    """`_info.json` as timm's wds reader reads it (name, splits), plus our class names."""
    info = {"name": name, "classes": list(classes), "splits": splits}
    write_atomic(out / "_info.json", lambda f: f.write(json.dumps(info, indent=1).encode()))


def _write_tar(f, chunk: list, data: ImageSet) -> None:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, raw, ext, source in chunk:
            key = f"{i:08d}"  # no dots: webdataset cuts a key at its first dot
            meta = json.dumps({"filename": _relative(source), "label": int(data.labels[i])})
            for suffix, payload in ((ext, raw), ("cls", str(int(data.labels[i])).encode()),
                                    ("json", meta.encode())):  # fmt: skip
                member = tarfile.TarInfo(f"{key}.{suffix}")
                member.size, member.mode = len(payload), 0o644
                tar.addfile(member, io.BytesIO(payload))


def _write_parquet(f, chunk: list, data: ImageSet) -> None:
    import pyarrow as pa

    from resnext.data.parquet import hf_metadata, pyarrow_parquet

    image = pa.StructArray.from_arrays(
        [pa.array([raw for _, raw, _, _ in chunk], pa.binary()),
         pa.array([_relative(s) for _, _, _, s in chunk], pa.string())],
        names=["bytes", "path"],
    )  # fmt: skip
    labels = pa.array([int(data.labels[i]) for i, _, _, _ in chunk], pa.int64())
    table = pa.table({"image": image, "label": labels})
    table = table.replace_schema_metadata(hf_metadata(data.classes))
    # One row per row group, uncompressed (images do not compress) and without a dictionary:
    # a row is then one positioned read of its column chunk (data/pages.py).
    pyarrow_parquet().write_table(
        table, f, row_group_size=1, compression="none", use_dictionary=False,
        write_statistics=["label"],
    )  # fmt: skip


def _relative(name: str) -> str:
    """The last three parts of a source name (split/class/file for a folder)."""
    return "/".join(Path(name).parts[-3:])
