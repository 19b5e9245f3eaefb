"""Image folders in the ImageNet layout, `root/<split>/<class>/.../<image>`, as torchvision's
ImageFolder reads them: class folders sorted, images found recursively in sorted order.

Small images are decoded once and held in memory as uint8, so that CPU epochs are bound by
compute; large ones (ImageNet) are decoded per image by DataLoader workers. Every image goes
through the one decoder, `data.images.decode_image`, as in evaluate and predict.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from resnext.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    decode_image,
    open_image,
    over_pixel_limit,
)
from resnext.data.imageset import BAD_IMAGE_ERRORS, ImageSet, note_bad, too_small
from resnext.errors import one_line

log = logging.getLogger("resnext.data.datasets")

SMALL_IMAGE = 64  # in_memory="auto" decodes into memory when images are at most this size


def class_files(folder: Path) -> list[Path]:
    """Every file under a class folder, recursively (symlinks followed), in ImageFolder's order;
    hidden files and folders are left out."""
    walked = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        walked.append((root, names))
    return [Path(root) / n for root, names in sorted(walked) for n in sorted(names)
            if not n.startswith(".")]  # fmt: skip


def load_folder(
    root: str,
    split: str,
    in_memory: str = "auto",
    bad_images: str = "skip",
    min_size: int = 1,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> ImageSet:
    """`root/<split>/<class>/...`; `split` is "train", "val" or "test".

    Bad files are skipped with one warning each, or fatal with bad_images="error"; small
    images are checked here (they are decoded now), large ones when a batch first reads them.
    Images decoded into memory are brought to `size` x `size` as evaluation brings them
    (shorter side resized, centre crop) when `size` is given, so sizes may be mixed; without
    it they must share one size.
    """
    base = Path(root) / split
    if not base.is_dir():
        why = f"{root} does not exist" if not Path(root).exists() else f"expected {base}/<class>/"
        raise ValueError(f"no {split} folder in {root!r} ({why})")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {base} (expected {base}/<class>/<image>)")
    data = ImageSet(classes, torch.zeros(0, dtype=torch.int64), on_bad=bad_images, split=split,
                    min_size=min_size, max_pixels=max_pixels)  # fmt: skip
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in class_files(base / c):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(i)
            else:
                note_bad(data, str(p), "not an image file")
    data.labels, data.paths = torch.tensor(labels, dtype=torch.int64), paths
    if in_memory == "yes" or (in_memory == "auto" and _is_small(data)):
        data.images, kept = _decode_all(data, size)
        data.labels, data.paths = data.labels[kept], None
    counts = torch.bincount(data.labels, minlength=len(classes)).tolist()
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if len(empty) == len(classes):
        raise ValueError(f"no readable images in {base}/<class>/")
    if empty:
        raise ValueError(f"class folder {base / empty[0]} holds no readable images")
    return data


def _is_small(data: ImageSet) -> bool:
    """Whether the first usable image is small enough to hold the set in memory."""
    for p in data.paths or []:
        try:
            with open_image(p) as im:
                size = im.size
        except BAD_IMAGE_ERRORS as e:
            note_bad(data, str(p), one_line(e))
            continue
        reason = over_pixel_limit(size, data.max_pixels) or too_small(size, data.min_size)
        if reason is None:
            return max(size) <= SMALL_IMAGE
        note_bad(data, str(p), reason)
    return False


_decoded: dict | None = None  # set by `decode_once`


@contextlib.contextmanager
def decode_once() -> Iterator[None]:
    """Within this block each image folder is decoded once per process: a study trains many
    runs on one data set, and decoding 60,000 JPEGs takes about a minute."""
    global _decoded
    _decoded = {}
    try:
        yield
    finally:
        _decoded = None


def _decode_all(data: ImageSet, size: int | None) -> tuple[Tensor, Tensor]:
    """Every usable image as uint8 (N, C, H, W), and the indices of those read."""
    key = (tuple(str(p) for p in data.paths or []), data.on_bad, data.min_size, size,
           data.max_pixels)  # fmt: skip
    if _decoded is not None and key in _decoded:
        images, kept, bad = _decoded[key]
        for path, reason in bad:
            note_bad(data, path, reason)
        return images, kept
    bad_before = set(data.bad)
    images, kept = _decode_files(data, size)
    if _decoded is not None:
        bad = [(b, "unreadable (decoded earlier in this process)") for b in data.bad - bad_before]
        _decoded[key] = (images, kept, bad)
    return images, kept


def _decode_files(data: ImageSet, size: int | None) -> tuple[Tensor, Tensor]:
    paths = data.paths or []
    log.info("decoding %d images into memory", len(paths))
    out, kept, first, resized = None, [], None, 0
    for i, p in enumerate(paths):
        try:
            image = decode_image(p, data.decode_channels, max_pixels=data.max_pixels)
        except BAD_IMAGE_ERRORS as e:
            note_bad(data, str(p), one_line(e))
            continue
        reason = too_small(image.size, data.min_size)
        if reason is not None:
            note_bad(data, str(p), reason)
            continue
        if size is not None and image.size != (size, size):
            from resnext.data.transforms import eval_image  # torchvision: ~2 s of start-up

            resized += 1
            arr = eval_image(image, size, size, False).permute(1, 2, 0).numpy()
        else:
            arr = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
        if out is None:
            out, first = np.empty((len(paths), *arr.shape), dtype=np.uint8), p
        if arr.shape != out.shape[1:]:
            raise ValueError(
                f"{p} is {arr.shape[1]}x{arr.shape[0]} px, {first} is {out.shape[2]}x"
                f"{out.shape[1]}: images held in memory share one size (set in_memory=no)"
            )
        out[len(kept)] = arr
        kept.append(i)
    if resized:
        log.info("%s: %d of %d images brought to %dx%d px as evaluation brings them (shorter "
                 "side resized to %d, centre crop)", data.split, resized, len(kept), size, size,
                 size)  # fmt: skip
    if out is None:
        out = np.empty((0, 1, 1, data.decode_channels), dtype=np.uint8)
    images = torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(kept, dtype=torch.int64)
