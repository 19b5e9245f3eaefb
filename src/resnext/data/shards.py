"""WebDataset tar shards in the layout of timm's `imagenet-1k-wds`, read by random access.

    DIR/_info.json                    {"name", "splits": {split: {"name", "num_samples",
                                       "filenames", "shard_lengths"}}} as timm's reader_wds reads
                                       it; ours adds "classes" (timm ignores keys it does not use)
    DIR/NAME-train-0000.tar ...       samples KEY.jpg (or .png, .webp) + KEY.cls (its label)
    DIR/NAME-validation-0000.tar ...  the held-out split

Each tar's 512-byte member headers are read once when the set loads (parsed here; no package
beyond the standard library), keeping each image's offset and size, so that reading a sample is one
positioned read (`os.pread`) and batches stay a function of (seed, epoch, step). File handles
open lazily in the process that reads (each DataLoader worker its own), a few at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from resnext.data.images import IMAGE_SUFFIXES, MAX_PIXELS
from resnext.data.imageset import ImageSet, NoSamples, note_bad, with_class
from resnext.data.memory import hold_small

log = logging.getLogger("resnext.data.datasets")

INFO = "_info.json"
_IMAGE_EXTS = {s[1:] for s in IMAGE_SUFFIXES}
_OPEN_FILES = 64  # handles kept open per process; ImageNet has 1,024 train shards
_SCAN_THREADS = 8


class TarRecords:
    """Image members of tar shards: shard index, data offset and size, and key per record."""

    def __init__(self, shards: list[Path], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, keys: np.ndarray) -> None:  # fmt: skip
        # numpy arrays, not lists of Python objects: forked workers then share the index (no
        # reference counts written, so no copy-on-write of 1.28 M objects per worker).
        self.shards, self.shard, self.offset, self.size = shards, shard, offset, size
        self.keys = keys  # UTF-8 bytes
        self._files: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:  # handles stay in the process that opened them
        return {**self.__dict__, "_files": OrderedDict()}

    def name(self, i: int) -> str:
        return f"{self.shards[self.shard[i]]}:{self.keys[i].decode()}"

    def read(self, i: int) -> bytes:
        fd = self._fd(int(self.shard[i]))
        data = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        if len(data) != self.size[i]:
            raise OSError(f"{self.name(i)}: shard ends inside the image (truncated)")
        return data

    def take(self, keep: list[int]) -> TarRecords:
        return TarRecords(self.shards, self.shard[keep], self.offset[keep], self.size[keep],
                          self.keys[keep])  # fmt: skip

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
    # Threads overlap the reads of many shards: on a network file system each header is a
    # round trip, and reading releases the GIL.
    with ThreadPoolExecutor(_SCAN_THREADS) as pool:
        scanned = list(pool.map(scan_tar, shards))
    for s, (path, samples) in enumerate(zip(shards, scanned)):
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
    keep = with_class(data, labels, lambda j: f"{shards[index[j][0]]}:{index[j][3]}")
    labels, index = [labels[j] for j in keep], [index[j] for j in keep]
    if not index:
        raise NoSamples(f"no readable samples in the {split} shards of {root}")
    s, off, size, keys = zip(*index)
    data.records = TarRecords(shards, np.array(s, dtype=np.int32), np.array(off, dtype=np.int64),
                              np.array(size, dtype=np.int64),
                              np.array([k.encode() for k in keys], dtype=np.bytes_))  # fmt: skip
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
        _check_numbering(shards)
        return shards, []
    shards = [base / f for f in entry.get("filenames", [])]
    if not shards:
        raise ValueError(f"{base / INFO} lists no {split} shards")
    for p in shards:
        if not p.is_file():
            raise ValueError(f"shard {p} is missing ({INFO} lists it in the {split} split)")
    lengths = [int(n) for n in entry.get("shard_lengths", [])]
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


def held_out_splits(root: str) -> list[str]:
    """The held-out splits present in `root`: "validation", "test" (as in _info.json, or names)."""
    info = read_info(root)
    names = {p.name for p in Path(root).glob("*.tar")}
    return [s for s in ("validation", "test")
            if s in info.get("splits", {}) or any(f"-{s}-" in n for n in names)]  # fmt: skip


# webdataset's rule: a member's key is its path up to the first dot of its file name.
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")  # regular files (tar's "contiguous" type 7 included)


def scan_tar(path: Path) -> list[tuple[str, tuple[int, int] | None, bytes | None]]:
    """(key, (offset, size) of its image or None, its .cls bytes or None) per sample, in order.

    Raises ValueError naming the shard when it is not a tar or is truncated.
    """
    samples: dict[str, list] = {}
    try:
        with open(path, "rb") as f:
            for name, offset, size in tar_members(f, path.stat().st_size):
                found = _KEY.match(name)
                if found is None:
                    continue
                key, ext = found.group(1), found.group(2).lower()
                sample = samples.setdefault(key, [key, None, None])
                if ext in _IMAGE_EXTS and sample[1] is None:
                    sample[1] = (offset, size)
                elif ext == "cls":
                    f.seek(offset)
                    sample[2] = f.read(size)
    except _Damaged as e:
        raise ValueError(f"shard {path} {e} (download or pack it again)") from None
    except OSError as e:
        raise ValueError(f"cannot read shard {path}: {e}") from None
    return [tuple(s) for s in samples.values()]


class _Damaged(Exception):
    """A tar file that is truncated or not a tar file."""


def tar_members(f, file_size: int):
    """(name, data offset, size) of each regular file in a tar, from its headers alone.

    Iterating with the standard library's tarfile alone takes 47-69 us per sample of three
    members (an object per member); this reads the ustar headers itself (GNU long names and pax
    paths included) in 15-21 us, measured on one core: 25 s for ImageNet's 1.28 M samples.
    """
    pos, long_name = 0, None
    while True:
        f.seek(pos)
        header = f.read(_BLOCK)
        if len(header) < _BLOCK:
            raise _Damaged("is truncated (no end-of-archive blocks)" if pos else "is empty")
        if header == bytes(_BLOCK):
            if f.read(_BLOCK) != bytes(_BLOCK):
                raise _Damaged("is truncated (half an end-of-archive)")
            return
        if _checksum(header) != _octal(header[148:156]):
            raise _Damaged(f"is not a tar file (bad header at byte {pos})")
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        size, kind, data = _size(header[124:136]), header[156:157], pos + _BLOCK
        if data + size > file_size:
            raise _Damaged(f"is truncated (a member ends past its {file_size} bytes)")
        if kind in (b"L", b"x"):  # the next member's name: GNU long name, pax record
            f.seek(data)
            long_name = _long_name(f.read(size), kind)
        else:  # a long name belongs to the next member, whatever its kind (folder, link)
            if kind in _FILE_TYPES:
                yield (long_name or name).decode("utf-8", "replace"), data, size
            long_name = None
        pos = data + (size + _BLOCK - 1) // _BLOCK * _BLOCK


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _octal(field: bytes) -> int:
    try:
        return int(field.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        return -1


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for members of 8 GB and more
        return int.from_bytes(field[1:], "big")
    return max(_octal(field), 0)


def _long_name(data: bytes, kind: bytes) -> bytes | None:
    if kind == b"L":
        return data.split(b"\0", 1)[0]
    for record in data.split(b"\n"):  # pax: "LENGTH key=value"
        key, _, value = record.partition(b" ")[2].partition(b"=")
        if key == b"path":
            return value
    return None


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
