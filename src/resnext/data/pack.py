"""`resnext pack`: a data set written as WebDataset tar shards or as parquet files, once, so that a
cluster's network file system serves a few large files instead of a million small ones.

The encoded images are copied as they are (never re-encoded), in the set's order, so that the
packed set gives the same batches as its source. Each split is written as `train`,
`validation` (a folder's val/) and `test`, with the metadata the other readers of the format
use: `_info.json` for timm's wds reader, the ClassLabel feature for Hugging Face `datasets`;
and our own index of each split (data/index.py), so that the first run starts in seconds.
Every file is written under a temporary name and renamed when complete (resnext.atomic), and
`_pack.json` records the progress after each shard: a pack that stopped (killed, a full disk)
resumes after its last complete shard when run again with the same arguments.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from resnext.atomic import write_atomic
from resnext.data.bad_images import BAD_IMAGE_ERRORS, BadImages, NoSamples
from resnext.data.images import IMAGE_SUFFIXES, open_image
from resnext.data.parquet import ADVISE_PACK
from resnext.data.samples import ImageSet, common_classes
from resnext.errors import one_line

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # folder -> packed


def encoded(data: ImageSet, start: int = 0) -> Iterator[tuple[int, bytes, str, str]]:
    """(index, encoded bytes, format suffix, source name) of every readable image of `data`,
    from image `start` on."""
    for i in range(start, len(data)):
        try:
            source, name = data.open(i)
            raw = Path(source).read_bytes() if isinstance(source, (str, Path)) else source.read()
            with open_image(io.BytesIO(raw)) as im:  # reads the header only
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


@dataclass(frozen=True)
class Format:
    """How one packed format is written: a shard's file name (k-th of the split, before the
    count is known) and its writer; `numbered` formats name the count ("-of-NNNNN") at the end."""

    path: Callable[[Path, str, str, int], Path]
    write: Callable[[BinaryIO, list, ImageSet], None]
    numbered: bool


def _tar_path(out: Path, name: str, split: str, k: int) -> Path:
    return out / f"{name}-{split}-{k:04d}.tar"


def _parquet_path(out: Path, name: str, split: str, k: int) -> Path:
    return out / "data" / f"{split}-{k:05d}.parquet.unnumbered"


STATE = "_pack.json"  # an unfinished pack's progress: what a second run resumes from
PROGRESS_SECONDS = 30.0  # how often a split's progress is logged


def pack_split(
    data: ImageSet, fmt: str, out: Path, name: str, split: str, shard_size: int,
    state: dict | None = None, save_state: Callable[[dict], None] = lambda state: None,
) -> dict:  # fmt: skip
    """Write `data` as `split` shards of `shard_size` samples; returns its _info.json entry.

    Shards are written as they fill (a shard's images in memory at a time), each atomically;
    after each one `save_state` records the split's progress (`state`: the shards written, their
    lengths and the next image), from which a second run resumes. A numbered format's count
    ("-of-NNNNN") is known at the end, when the finished files are renamed.
    """
    form = FORMATS[fmt]
    state = state or {"done": [], "lengths": [], "next": 0}
    done, lengths, chunk = [out / p for p in state["done"]], list(state["lengths"]), []
    progress = _Progress(split, len(data), state["next"])

    def flush(next_image: int) -> None:
        path = form.path(out, name, split, len(done))
        write_atomic(path, lambda f: form.write(f, chunk, data))
        done.append(path)
        lengths.append(len(chunk))
        chunk.clear()
        save_state({"done": [p.relative_to(out).as_posix() for p in done], "lengths": lengths,
                    "next": next_image})  # fmt: skip

    for record in encoded(data, start=state["next"]):
        chunk.append(record)
        progress.show(record[0] + 1)
        if len(chunk) == shard_size:
            flush(record[0] + 1)
    if chunk:
        flush(len(data))
    if not done:
        raise ValueError(f"no readable images in the {data.split} split to pack")
    if form.numbered:
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


class _Progress:
    """Logs a split's progress (images read, images/s, time left) every PROGRESS_SECONDS."""

    def __init__(self, split: str, total: int, start: int) -> None:
        self.split, self.total, self.start = split, total, start
        self.t0 = self.last = time.monotonic()

    def show(self, at: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = (at - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - at) / rate if rate else float("inf")
        log.info("%s: %d of %d images (%.0f images/s, about %.0f min left)", self.split, at,
                 self.total, rate, left / 60)  # fmt: skip


def pack_dataset(
    dataset: str, root: str, fmt: str, out: str, name: str = "", shard_size: int = 1000,
    num_classes: int = 0, **old,
) -> dict[str, dict]:  # fmt: skip
    """Pack every split of a data set (folder, wds or parquet) into `out` as `fmt`, in shards of
    `shard_size` samples (`size=` is its old name); data that records no class names has
    `num_classes` classes (0: as its labels say, datasets.class_names).

    Returns {split: its _info.json entry}. `out` must be new or empty, or hold a pack of the
    same arguments that stopped before its end: it then resumes after the last complete shard.
    A packed set is never mixed with the files of another.
    """
    if "size" in old:
        warnings.warn("pack_dataset(size=) is now shard_size=", DeprecationWarning, stacklevel=2)
        shard_size = old.pop("size")
    if old:
        raise TypeError(f"pack_dataset() got unexpected arguments {sorted(old)}")
    from resnext.data.datasets import READERS

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {tuple(FORMATS)}, got {fmt!r}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if num_classes < 0:
        raise ValueError(f"--num-classes must not be negative, got {num_classes}")
    target = Path(out)
    name = name or Path(root).resolve().name
    args = {"dataset": dataset, "root": str(Path(root).resolve()), "format": fmt, "name": name,
            "shard_size": shard_size, "num_classes": num_classes}  # fmt: skip
    state = _resume_state(target, args)
    sources = _sources(dataset, root, num_classes)
    classes = sources[0][1].classes
    _write_json(target / STATE, state)  # from here on, a second run resumes
    splits = {}
    for split, data in sources:
        common = common_classes(classes, data.classes)
        if common is None:
            raise ValueError(
                f"the {split} split of {root} has other classes than the {sources[0][0]} split"
            )
        packed = SPLIT_NAMES.get(split, split)
        data = data.replace(classes=common)
        if packed in state["finished"]:
            splits[packed] = state["finished"][packed]
            continue

        def save(progress: dict, packed: str = packed, state: dict = state) -> None:
            _write_json(target / STATE, {**state, "split": packed, "progress": progress})

        begun = state["progress"] if state.get("split") == packed else None
        splits[packed] = pack_split(data, fmt, target, name, packed, shard_size, begun, save)
        state = {**state, "finished": {**state["finished"], packed: splits[packed]},
                 "split": None, "progress": None}  # fmt: skip
        _write_json(target / STATE, state)
    if fmt == "wds":
        write_info(target, name, classes, splits)
    (target / STATE).unlink()
    for packed in splits:  # the index beside the shards: the first run reads it in seconds
        READERS[fmt].scan(str(target), packed, BadImages())
    return splits


def _sources(dataset: str, root: str, num_classes: int) -> list[tuple[str, ImageSet]]:
    """Every split of the data set to pack, read (a split without labels, other than train,
    is left out with a warning)."""
    from resnext.data.datasets import load_dataset, splits_present

    sources: list[tuple[str, ImageSet]] = []
    quiet = ADVISE_PACK.set(False)  # no "pack these files" advice while packing them
    try:
        for s in splits_present(dataset, root):
            # The held-out splits have the training split's classes, whatever labels they hold.
            count = len(sources[0][1].classes) if sources else num_classes
            try:
                data = load_dataset(dataset, root, s, in_memory="no", num_classes=count)
            except NoSamples as e:  # ImageNet's test split has no labels: nothing to train on
                if s == "train":
                    raise
                log.warning("not packing the %s split: %s", s, e)
                continue
            sources.append((s, data))
    finally:
        ADVISE_PACK.reset(quiet)
    return sources


def _resume_state(target: Path, args: dict) -> dict:
    """A new pack's state, or that of the unfinished pack of the same `args` in `target`."""
    fresh = {"args": args, "finished": {}, "split": None, "progress": None}
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return fresh
    why = "pack writes a new data set"
    try:
        state = json.loads((target / STATE).read_text()) if target.is_dir() else None
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and state.get("args") == args:
        log.info("resuming the unfinished pack in %s", target)
        for tmp in [*target.glob(".*.tmp"), *target.glob("data/.*.tmp")]:  # a killed write's
            tmp.unlink()
        return state
    if isinstance(state, dict):
        why = f"it holds an unfinished pack of other arguments: {state.get('args')}"
    raise ValueError(f"--out {target} is not an empty folder ({why})")


def _write_json(path: Path, value: dict) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(value, indent=1).encode()))


def write_info(out: Path, name: str, classes: list[str], splits: dict[str, dict]) -> None:
    """`_info.json` as timm's wds reader reads it (name, splits), plus our class names."""
    info = {"name": name, "classes": list(classes), "splits": splits}
    _write_json(out / "_info.json", info)


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


FORMATS = {
    "wds": Format(_tar_path, _write_tar, numbered=False),
    "parquet": Format(_parquet_path, _write_parquet, numbered=True),
}
