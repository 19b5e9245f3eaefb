"""Small images held in memory: decoded once into uint8 (N, C, H, W), whatever reader found
them (folder, WebDataset shards, parquet), so that CPU epochs are bound by compute.

Large images (ImageNet) stay where they are and are decoded per image by DataLoader workers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from resnext.data.bad_images import BAD_IMAGE_ERRORS, too_small
from resnext.data.images import decode_image, open_image
from resnext.data.samples import ImageSet
from resnext.errors import one_line

log = logging.getLogger(__name__)

SMALL_IMAGE = 64  # in_memory="auto" decodes into memory when images are at most this size


def hold_small(data: ImageSet, in_memory: str, size: int | None = None,
               first: tuple[int, int] | None = None) -> ImageSet:  # fmt: skip
    """`data` with every image decoded into memory if asked ("yes") or if they are small
    ("auto": the first usable image, of size `first` when known, is at most SMALL_IMAGE), each
    brought to `size` x `size` when given (`_decode_every`); else `data`."""
    if in_memory == "auto" and first is None:
        first = first_usable(data)
    if in_memory == "yes" or (in_memory == "auto" and first and max(first) <= SMALL_IMAGE):
        images, kept = _decode_all(data, size)
        return data.replace(images=images, labels=data.labels[kept], records=None)
    return data


def first_usable(data: ImageSet) -> tuple[int, int] | None:
    """The size of the first usable image, read from its header (those before it noted as
    bad); None when there is none."""
    if data.images is not None:
        return (data.images.shape[-1], data.images.shape[-2]) if len(data) else None
    for i in range(len(data)):
        try:
            source, name = data.open(i)
            with open_image(source) as im:
                size = im.size
        except BAD_IMAGE_ERRORS as e:
            data.bad.note(data.name(i), one_line(e))
            continue
        reason = data.bad.size_problem(size)
        if reason is None:
            return size
        data.bad.note(name, reason)
    return None


_decoded: dict | None = None  # set by `decode_once`


@contextlib.contextmanager
def decode_once() -> Iterator[None]:
    """Within this block each data set is decoded once per process: a study trains many
    runs on one data set, and decoding 60,000 JPEGs takes about a minute."""
    global _decoded
    _decoded = {}
    try:
        yield
    finally:
        _decoded = None


def _decode_all(data: ImageSet, size: int | None) -> tuple[Tensor, Tensor]:
    """Every usable image as uint8 (N, C, H, W), and the indices of those read."""
    bad = data.bad
    key = (tuple(data.name(i) for i in range(len(data))), bad.on_bad, bad.min_size, size,
           bad.max_pixels)  # fmt: skip
    if _decoded is not None and key in _decoded:
        images, kept, found = _decoded[key]
        for name, reason in found:
            bad.note(name, reason)
        return images, kept
    bad_before = set(bad.files)
    images, kept = _decode_every(data, size)
    if _decoded is not None:
        found = [
            (b, "unreadable (decoded earlier in this process)") for b in bad.files - bad_before
        ]
        _decoded[key] = (images, kept, found)
    return images, kept


def _decode_every(data: ImageSet, size: int | None) -> tuple[Tensor, Tensor]:
    """With `size`, each image is brought to that size as evaluation brings it (shorter side
    resized, centre crop), so sizes may be mixed; without, they must agree."""
    log.info("decoding %d images into memory", len(data))
    out, kept, first, resized = None, [], None, 0
    for i in range(len(data)):
        try:
            source, name = data.open(i)
            image = decode_image(source, data.decode_channels, max_pixels=data.bad.max_pixels)
        except BAD_IMAGE_ERRORS as e:
            data.bad.note(data.name(i), one_line(e))
            continue
        reason = too_small(image.size, data.bad.min_size)
        if reason is not None:
            data.bad.note(name, reason)
            continue
        if size is not None and image.size != (size, size):
            from resnext.data.transforms import eval_image  # torchvision: ~2 s of start-up

            resized += 1
            arr = eval_image(image, size, size, False).permute(1, 2, 0).numpy()
        else:
            arr = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
        if out is None:
            out, first = np.empty((len(data), *arr.shape), dtype=np.uint8), name
        if arr.shape != out.shape[1:]:
            raise ValueError(
                f"{name} is {arr.shape[1]}x{arr.shape[0]} px, {first} is {out.shape[2]}x"
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
