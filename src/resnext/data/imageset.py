"""`ImageSet`, the one in-memory form of every data set, and the rule for bad image files.

An image that is not held in memory is reached by its index through `ImageSet.open`: a file
path (folders) or the bytes of a record in a shard (`Records`: data/shards.py, data/parquet.py).

A bad file (unreadable, not an image, or smaller than the training crop needs) is skipped with
one warning naming it and counted, or fatal with bad_images="error": the same rule whether the
image is decoded into memory now or by a DataLoader worker later.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import torch
from PIL import Image
from torch import Tensor

from resnext.data.images import MAX_PIXELS

log = logging.getLogger("resnext.data.datasets")

# What decoding raises for a missing, zero-byte, truncated or non-image file.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """A bad image file while bad_images="error"."""


class NoSamples(ValueError):
    """A split holds no readable, labelled image (e.g. ImageNet's unlabelled test split)."""


class NamedBytes(io.BytesIO):
    """An encoded image in memory that PIL's errors name by its record (not by an address)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.record = name

    def __repr__(self) -> str:
        return self.record


class Records(Protocol):
    """Encoded images reached by index, in the set's order: one seek and read per image."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str:
        """What warnings print for record `i`, e.g. `SHARD.tar:KEY` or `FILE.parquet:ROW`."""
        ...

    def read(self, i: int) -> bytes:
        """The encoded image of record `i` (raises OSError when it cannot be read)."""
        ...

    def take(self, keep: list[int]) -> Records:
        """The records at `keep`, in that order."""
        ...


@dataclass
class ImageSet:
    """Labelled images: decoded uint8 `images` (N, C, H, W) in memory, file `paths`, or
    `records` in shards; `open(i)` reaches the last two alike.

    `split` names the split read ("train", "val" or "test"). `bad` holds the bad files met so
    far (skipped, or fatal when `on_bad` is "error"); an image whose shorter side is below
    `min_size` is bad too (the training crop cannot be cut from it), and so is one of more
    than `max_pixels` pixels (read from its header). Files decode to `decode_channels` channels.
    """

    classes: list[str]
    labels: Tensor
    images: Tensor | None = None
    paths: list[Path] | None = None
    records: Records | None = None
    bad: set[str] = field(default_factory=set)
    on_bad: str = "skip"
    split: str = ""
    min_size: int = 1
    decode_channels: int = 3
    max_pixels: int = MAX_PIXELS
    memory_size: int | None = None  # images decoded into memory are brought to this size

    def __len__(self) -> int:
        return len(self.labels)

    def open(self, i: int) -> tuple[str | Path | IO[bytes], str]:
        """Image `i` as (what `images.decode_image` reads, the name warnings print)."""
        if self.records is not None:
            name = self.records.name(i)
            return NamedBytes(self.records.read(i), name), name
        path = self.paths[i]
        return path, str(path)

    def name(self, i: int) -> str:
        """The name warnings print for image `i`, without reading it."""
        return self.records.name(i) if self.records is not None else str(self.paths[i])

    @property
    def channels(self) -> int:
        return self.decode_channels if self.images is None else self.images.shape[1]

    def subset(self, limit: int, seed: int = 0) -> ImageSet:
        """`limit` images spread evenly over the classes, a seeded choice (all for 0).

        The first N files of a class-folder dataset would all be of the first class.
        """
        if not limit or limit >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        labels = self.labels[order].cpu()
        rank = torch.empty_like(labels)  # position of each image among its class's images
        for c in labels.unique():
            where = (labels == c).nonzero().squeeze(1)
            rank[where] = torch.arange(len(where))
        # Round robin: the first image of every class, then the second of every class, ...
        keep = order[(rank * len(self.classes) + labels).argsort()[:limit]].sort().values
        images = None if self.images is None else self.images[keep]
        paths = None if self.paths is None else [self.paths[i] for i in keep.tolist()]
        records = None if self.records is None else self.records.take(keep.tolist())
        return dataclasses.replace(
            self, labels=self.labels[keep], images=images, paths=paths, records=records
        )


def common_classes(trained: list[str], held_out: list[str]) -> list[str] | None:
    """The classes a held-out set shares with a training set, or None if they differ.

    Shards that record no class names are named by their labels, 0 to the largest label of the
    split read (shards.class_names): a small held-out split may lack the last classes, which
    is no disagreement.
    """
    if list(held_out) == list(trained):
        return list(trained)
    numbered = [str(i) for i in range(len(trained))]
    if list(trained) == numbered and list(held_out) == numbered[: len(held_out)]:
        return list(trained)
    return None


def with_class(data: ImageSet, labels: list[int], name_of) -> list[int]:
    """Indices of the samples whose label names one of `data.classes`; the others are bad
    images, named by `name_of(index)`."""
    n = len(data.classes)
    for j, y in enumerate(labels):
        if y >= n:
            note_bad(data, name_of(j), f"label {y} has no class ({n} names)")
    return [j for j, y in enumerate(labels) if y < n]


def note_bad(data: ImageSet, path: str, reason: str) -> None:
    """Skip a bad file with one warning, or raise if `data.on_bad` is "error"."""
    if data.on_bad == "error":
        raise BadImageError(f"bad image {path}: {reason} (bad_images=skip skips such files)")
    if path not in data.bad:
        data.bad.add(path)
        log.warning("skipping bad image %s: %s", path, reason)


def too_small(size: tuple[int, int], min_size: int) -> str | None:
    """Why an image of `size` (width, height) is bad for a crop of `min_size`, or None."""
    if min(size) >= min_size:
        return None
    return f"{size[0]}x{size[1]} px, smaller than the {min_size} px the training crop needs"
