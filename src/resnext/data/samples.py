"""`ImageSet`, the one form of every data set: class names, labels, and the images, either
decoded in memory (uint8, N x C x H x W) or `Records` reached by index (data/records.py).

A set is frozen: what changes a set (a subset, a move to the device, images decoded into
memory) makes a new one. Its `bad` policy (data/bad_images.py) is shared with the sets made
from it, so the bad files met by training's workers are counted where the set was loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from torch import Tensor

from resnext.data.bad_images import BadImages
from resnext.data.records import Records


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images: decoded uint8 `images` (N, C, H, W), or `records` decoded one by one to
    `decode_channels` channels. `split` names the split read ("train", "val", "test", ...)."""

    classes: list[str]
    labels: Tensor
    images: Tensor | None = None
    records: Records | None = None
    split: str = ""
    bad: BadImages = field(default_factory=BadImages)
    decode_channels: int = 3

    def __post_init__(self) -> None:
        if (self.images is None) == (self.records is None):
            raise ValueError("an ImageSet holds either images or records")

    def __len__(self) -> int:
        return len(self.labels)

    def open(self, i: int) -> tuple[str | Path | IO[bytes], str]:
        """Record `i` as (what `images.decode_image` reads, the name warnings print)."""
        return self.records.open(i)

    def name(self, i: int) -> str:
        """The name warnings print for record `i`, without reading it."""
        return self.records.name(i)

    @property
    def channels(self) -> int:
        return self.decode_channels if self.images is None else self.images.shape[1]

    def replace(self, **changes) -> ImageSet:
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device) -> ImageSet:
        """In-memory images and their labels on `device` (records stay where they are)."""
        if self.images is None:
            return self
        return self.replace(images=self.images.to(device), labels=self.labels.to(device))

    def take(self, keep: Tensor) -> ImageSet:
        """The samples at the indices `keep`, in that order."""
        if self.images is not None:
            return self.replace(images=self.images[keep], labels=self.labels[keep])
        return self.replace(records=self.records.take(keep.tolist()), labels=self.labels[keep])

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
        return self.take(keep)


def common_classes(trained: list[str], held_out: list[str]) -> list[str] | None:
    """The classes a held-out set shares with a training set, or None if they differ.

    Shards that record no class names are named by their labels, 0 to the largest label of the
    split read (datasets.class_names): a small held-out split may lack the last classes,
    which is no disagreement.
    """
    if list(held_out) == list(trained):
        return list(trained)
    numbered = [str(i) for i in range(len(trained))]
    if list(trained) == numbered and list(held_out) == numbered[: len(held_out)]:
        return list(trained)
    return None


@dataclass(frozen=True, eq=False)
class Scan:
    """What a reader found in one split, before the rules every format shares (datasets.py):
    its records in order, their labels, and the class names the files record (None: none).

    `source` names the data in messages; `empty` is the message when no sample is left;
    `whole_classes`, where every named class must keep an image (a folder), names its folder;
    `labels_from` says where the labels were read (logged at every load).
    """

    records: Records
    labels: list[int]
    classes: list[str] | None
    source: str
    empty: str
    names_where: str = ""
    whole_classes: Path | None = None
    labels_from: str = ""
