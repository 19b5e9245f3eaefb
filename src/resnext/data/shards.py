"""WebDataset tar shards in the layout of timm's `imagenet-1k-wds`, read by random access.

    DIR/_info.json                    {"name", "splits": {split: {"name", "num_samples",
                                       "filenames", "shard_lengths"}}} as timm's reader_wds reads
                                       it; ours adds "classes" (timm ignores keys it does not use)
    DIR/NAME-train-0000.tar ...       samples KEY.jpg (or .png, .webp) + KEY.cls (its label)
    DIR/NAME-validation-0000.tar ...  the held-out split

Each tar's member headers are read once when the set loads (the standard library's tarfile:
no extra package), keeping each image's offset and size, so that reading a sample is one
positioned read (`os.pread`) and batches stay a function of (seed, epoch, step). File handles
open lazily in the process that reads (each DataLoader worker its own), a few at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from resnext.data.images import IMAGE_SUFFIXES, MAX_PIXELS
from resnext.data.imageset import ImageSet, note_bad
from resnext.data.memory import hold_small

log = logging.getLogger("resnext.data.datasets")

INFO = "_info.json"
_IMAGE_EXTS = {s[1:] for s in IMAGE_SUFFIXES}
_OPEN_FILES = 64  # handles kept open per process; ImageNet has 1,024 train shards


class TarRecords:
    """Image members of tar shards: shard index, data offset and size, and key per record."""

    def __init__(self, shards: list[Path], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, keys: list[str]) -> None:  # fmt: skip
        self.shards, self.shard, self.offset, self.size, self.keys = (
            shards,
            shard,
            offset,
            size,
            keys,
        )
        self._files: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:  # handles stay in the process that opened them
        return {**self.__dict__, "_files": OrderedDict()}

    def name(self, i: int) -> str:
        return f"{self.shards[self.shard[i]]}:{self.keys[i]}"

    def read(self, i: int) -> bytes:
        fd = self._fd(int(self.shard[i]))
        data = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        if len(data) != self.size[i]:
            raise OSError(f"{self.name(i)}: shard ends inside the image (truncated)")
        return data

    def take(self, keep: list[int]) -> TarRecords:
        return TarRecords(self.shards, self.shard[keep], self.offset[keep], self.size[keep],
                          [self.keys[i] for i in keep])  # fmt: skip

    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours
            self._files, self._pid = OrderedDict(), os.getpid()
        fd = self._files.pop(s, None)
        if fd is None:
            fd = os.open(self.shards[s], os.O_RDONLY)
            if len(self._files) >= _OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        self._files[s] = fd  # most recently used last
        return fd


def load_wds(
    root: str,
    split: str,
    in_memory: str = "auto",
    bad_images: str = "skip",
    min_size: int = 1,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> ImageSet:
    """The `split` ("train", "validation" or "test") of the shards in `root`.

    A missing or truncated shard is a ValueError naming it, before any training; a sample
    without an image or a usable label is a bad image (skipped with a warning, counted).
    """
    info = read_info(root)
    shards, lengths = split_shards(root, split, info)
    data = ImageSet([], torch.zeros(0, dtype=torch.int64), on_bad=bad_images, split=split,
                    min_size=min_size, memory_size=size, max_pixels=max_pixels)  # fmt: skip
    index: list[tuple[int, int, int, str]] = []
    labels: list[int] = []
    for s, path in enumerate(shards):
        samples = scan_tar(path)
        if lengths and len(samples) != lengths[s]:
            raise ValueError(
                f"shard {path} holds {len(samples)} samples where {INFO} says {lengths[s]} "
                "(truncated or replaced: download or pack it again)"
            )
        for key, image, label in samples:
            name = f"{path}:{key}"
            reason = "no image" if image is None else _label_problem(label)
            if reason is not None:
                note_bad(data, name, reason)
                continue
            index.append((s, image[0], image[1], key))
            labels.append(int(label))
    data.classes = class_names(info.get("classes"), labels, f"{root} ({INFO} names none)")
    labels, index = _in_range(data, labels, index, shards)
    if not index:
        raise ValueError(f"no readable samples in the {split} shards of {root}")
    s, off, size, keys = zip(*index)
    data.records = TarRecords(shards, np.array(s, dtype=np.int32), np.array(off, dtype=np.int64),
                              np.array(size, dtype=np.int64), list(keys))  # fmt: skip
    data.labels = torch.tensor(labels, dtype=torch.int64)
    hold_small(data, in_memory)
    return data


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
    return info


def split_shards(root: str, split: str, info: dict) -> tuple[list[Path], list[int]]:
    """The shard files of `split` in order, and their sample counts where _info.json gives them.

    Every shard _info.json lists must exist; without _info.json, `*-SPLIT-*.tar` in name order.
    """
    base = Path(root)
    entry = info.get("splits", {}).get(split)
    if entry is None:
        shards = sorted(p for p in base.glob("*.tar") if f"-{split}-" in p.name)
        if not shards:
            raise ValueError(f"no {split} shards in {root} (expected NAME-{split}-NNNN.tar)")
        return shards, []
    shards = [base / f for f in entry.get("filenames", [])]
    if not shards:
        raise ValueError(f"{base / INFO} lists no {split} shards")
    for p in shards:
        if not p.is_file():
            raise ValueError(f"shard {p} is missing ({INFO} lists it in the {split} split)")
    lengths = [int(n) for n in entry.get("shard_lengths", [])]
    return shards, lengths if len(lengths) == len(shards) else []


def held_out_splits(root: str) -> list[str]:
    """The held-out splits present in `root`: "validation", "test" (as in _info.json, or names)."""
    info = read_info(root)
    names = {p.name for p in Path(root).glob("*.tar")}
    return [s for s in ("validation", "test")
            if s in info.get("splits", {}) or any(f"-{s}-" in n for n in names)]  # fmt: skip


# webdataset's rule: a member's key is its path up to the first dot of its file name.
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def scan_tar(path: Path) -> list[tuple[str, tuple[int, int] | None, bytes | None]]:
    """(key, (offset, size) of its image or None, its .cls bytes or None) per sample, in order.

    Raises ValueError naming the shard when it is not a tar or is truncated.
    """
    samples: dict[str, list] = {}
    end = 0
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                found = _KEY.match(m.name)
                if not m.isfile() or found is None:
                    continue
                key, ext = found.group(1), found.group(2).lower()
                sample = samples.setdefault(key, [key, None, None])
                end = max(end, m.offset_data + m.size)
                if ext in _IMAGE_EXTS and sample[1] is None:
                    sample[1] = (m.offset_data, m.size)
                elif ext == "cls":
                    tar.fileobj.seek(m.offset_data)  # tarfile seeks back to its next header
                    sample[2] = tar.fileobj.read(m.size)
            last = tar.offset  # where the end-of-archive blocks should start
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"cannot read shard {path}: {e}") from None
    if not _ends_properly(path, end, last):
        raise ValueError(f"shard {path} is truncated (download or pack it again)")
    return [tuple(s) for s in samples.values()]


def _ends_properly(path: Path, end: int, last: int) -> bool:
    """Whether every member's data lies inside the file and the end-of-archive blocks follow."""
    size = path.stat().st_size
    if end > size or size < last + 2 * tarfile.BLOCKSIZE:
        return False
    with open(path, "rb") as f:
        f.seek(last)
        return not f.read(2 * tarfile.BLOCKSIZE).strip(b"\0")


def _label_problem(label: bytes | None) -> str | None:
    if label is None:
        return "no .cls label"
    try:
        value = int(label.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return f"label {label[:20]!r} is not an integer"
    return None if value >= 0 else f"label {value} (unlabelled)"


def class_names(names: list | None, labels: list[int], where: str) -> list[str]:
    """The recorded class names, or the label numbers as names when none are recorded."""
    if names:
        return [str(n) for n in names]
    count = max(labels, default=-1) + 1
    log.info("%s: classes named by their numbers 0..%d", where, count - 1)
    return [str(i) for i in range(count)]


def _in_range(data: ImageSet, labels: list[int], index: list, shards: list[Path]):
    """Leave out (as bad) samples whose label has no class name."""
    keep = [j for j, y in enumerate(labels) if y < len(data.classes)]
    if len(keep) < len(labels):
        for j in sorted(set(range(len(labels))) - set(keep)):
            s, _, _, key = index[j]
            note_bad(data, f"{shards[s]}:{key}",
                     f"label {labels[j]} has no class ({len(data.classes)} names)")  # fmt: skip
    return [labels[j] for j in keep], [index[j] for j in keep]
