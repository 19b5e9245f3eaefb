"""Datasets by their `--dataset` name, and the one road every file format takes.

A format's reader (image folders: folders.py, WebDataset shards: wds.py, parquet files:
parquet.py) knows only its files: `scan(root, split, bad)` returns what it found (a `Scan`) and
`splits(root)` the splits present. The rules every format shares live here, once: which
held-out split is read, the class names, labels past them, an empty split, and small images
held in memory (memory.py). CIFAR-10/100 (python format) and scikit-learn digits are in memory.

Every set is an `ImageSet` (samples.py); batches.py turns it into batches.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnext.data import folders, parquet, wds
from resnext.data.bad_images import BAD_IMAGE_ERRORS, BadImageError, BadImages, NoSamples
from resnext.data.images import MAX_PIXELS
from resnext.data.memory import decode_once, first_usable, hold_small
from resnext.data.samples import ImageSet, Scan

__all__ = ["BAD_IMAGE_ERRORS", "BadImageError", "ImageSet", "NoHeldOut", "decode_once",
           "held_out_split", "load_dataset"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """One file format: `scan(root, split, bad)` reads a split (sharded formats through their
    index, data/index.py); `splits(root)` lists those present, training first; `val` is its
    validation split's name; `what` names its files."""

    scan: Callable[[str, str, BadImages], Scan]
    splits: Callable[[str], list[str]]
    val: str
    what: str


READERS = {
    "folder": Reader(folders.scan, folders.splits, folders.VAL, "folder"),
    "wds": Reader(wds.load, wds.splits, wds.VAL, "wds shards"),
    "parquet": Reader(parquet.load, parquet.splits, parquet.VAL, "parquet shards"),
}
FILE_DATASETS = tuple(READERS)  # images read from files, at any size
SPLITS = ("train", "val", "test", "auto")


def load_dataset(
    name: str,
    root: str,
    split: str,
    in_memory: str = "auto",
    download: bool = False,
    bad_images: str = "skip",
    min_size: int = 1,
    memory_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    num_classes: int = 0,
    **deprecated,
) -> ImageSet:
    """Load `split` of a dataset by its `--dataset` name.

    `split` is "train", "val", "test" or "auto" (the held-out split `held_out_split` picks;
    "val" is the "validation" split of shards); the returned set's `split` names the one read.
    Images whose shorter side is below `min_size` are bad images (skipped or fatal as
    `bad_images` says), as are those of more than `max_pixels` pixels. Images decoded into
    memory are brought to `memory_size` x `memory_size` (shorter side resized, centre crop) when
    it is given (memory.py). Data that records no class names has `num_classes` classes
    (0: as many as its labels run to, `class_names`). (`size=` is the old name of
    `memory_size`.)
    """
    if "size" in deprecated:
        warnings.warn("load_dataset(size=) is now memory_size=", DeprecationWarning, stacklevel=2)
        memory_size = deprecated.pop("size")
    if deprecated:
        raise TypeError(f"load_dataset() got unexpected arguments {sorted(deprecated)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if name in READERS and not root:
        raise ValueError(f"--dataset {name} needs --data: the folder of its {READERS[name].what}")
    if split != "train":
        split = held_out_split(name, root, split)
    if name == "digits":
        return load_digits(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, split, download)
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}")
    bad = BadImages(bad_images, min_size, max_pixels)
    scan = READERS[name].scan(root, split, bad)
    return load_files(scan, split, bad, in_memory, memory_size, num_classes)


def load_files(scan: Scan, split: str, bad: BadImages, in_memory: str, memory_size: int | None,
               num_classes: int = 0) -> ImageSet:  # fmt: skip
    """The rules every file format shares, applied to what its reader found (vectorised: an
    ImageNet split is 1.28 M labels)."""
    labels = np.asarray(scan.labels, dtype=np.int64)
    classes = class_names(scan, labels, num_classes)
    keep = with_class(scan, labels, len(classes), bad)
    if not len(keep):
        raise NoSamples(no_samples(scan, bad))
    whole = len(keep) == len(labels)
    records = scan.records if whole else scan.records.take(keep.tolist())
    labels = torch.from_numpy(labels if whole else labels[keep])
    data = ImageSet(classes, labels, records=records, split=split, bad=bad)
    # Images are read up to the first usable one: a split with none stops here, not after a
    # "training" on nothing.
    first = first_usable(data)
    if first is None:
        raise NoSamples(no_samples(scan, bad))
    data = hold_small(data, in_memory, memory_size, first)
    if not len(data):
        raise NoSamples(no_samples(scan, bad))
    if scan.whole_classes is not None:
        counts = torch.bincount(data.labels, minlength=len(classes)).tolist()
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if len(empty) == len(classes):
            raise NoSamples(no_samples(scan, bad))
        if empty:
            raise ValueError(
                f"class folder {scan.whole_classes / empty[0]} holds no readable images"
            )
    return data


def class_names(scan: Scan, labels: np.ndarray, num_classes: int = 0) -> list[str]:
    """The names the files record; else `num_classes` classes named by their numbers; else,
    where no count is given, 0 to the largest label, when the labels leave no gap: a gap means
    a stray label (99999 among 0 and 1 would make a 100,000-class model), or classes unknown."""
    if scan.classes:
        return scan.classes
    if num_classes:
        return [str(i) for i in range(num_classes)]
    used = np.unique(labels)
    count = int(used[-1]) + 1 if len(used) else 0
    if len(used) < count:
        raise ValueError(
            f"{scan.source} record no class names and their labels leave gaps: the largest is "
            f"{count - 1}, {len(used)} distinct labels are used; give the class count "
            f"(train: --set num_classes=N, pack: --num-classes N) or record the names "
            f"({scan.names_where})"
        )
    log.info("%s record no class names: classes named by their numbers 0..%d", scan.source,
             count - 1)  # fmt: skip
    return [str(i) for i in range(count)]


def no_samples(scan: Scan, bad: BadImages) -> str:
    """The message of a split without a readable, labelled image: how many were bad, which."""
    if not bad.met:
        return scan.empty
    return f"{scan.empty}: all {bad.met} samples are bad ({bad.named()})"


def with_class(scan: Scan, labels: np.ndarray, n: int, bad: BadImages) -> np.ndarray:
    """Indices of the samples whose label names one of the `n` classes; the others are bad."""
    for j in np.flatnonzero(labels >= n).tolist():
        bad.note(scan.records.name(j), f"label {labels[j]} has no class ({n} names)")
    return np.flatnonzero(labels < n)


def held_out_split(name: str, root: str, asked: str = "auto") -> str:
    """The held-out split to evaluate on, in the reader's own name for it.

    A data set may hold a validation split, a test split or both: "auto" takes validation (the
    split for choosing a model; test stays untouched until asked for), else test. Folders name
    theirs val/ and test/, shards "validation" and "test". CIFAR and digits have one held-out
    split, their test set.
    """
    if asked not in ("auto", "val", "test"):
        raise ValueError(f"the held-out split is 'val' or 'test', got {asked!r}")
    if name not in READERS:
        if asked == "val":
            raise ValueError(f"{name} has no val split; its held-out split is test")
        return "test"
    reader = READERS[name]
    present = [s for s in reader.splits(root) if s != "train"]
    if not present:
        where = f"{root} does not exist" if root and not Path(root).exists() else "none found"
        raise NoHeldOut(f"no {reader.val} or test {reader.what} in {root!r} ({where})")
    want = present[0] if asked == "auto" else "test" if asked == "test" else reader.val
    if want not in present:
        raise NoHeldOut(f"no {want} {reader.what} in {root} (it holds {', '.join(present)})")
    return want


class NoHeldOut(ValueError):
    """The data set holds no held-out split of the kind asked for."""


def splits_present(name: str, root: str) -> list[str]:
    """Every split a file data set holds, training first, named as a folder names them (what
    `pack` copies)."""
    if name not in READERS:
        raise ValueError(f"only {', '.join(FILE_DATASETS)} data sets can be packed, not {name!r}")
    reader = READERS[name]
    found = reader.splits(root)
    if not found:
        why = "it does not exist" if not Path(root).exists() else "expected train/<class>/"
        raise ValueError(f"no train, val or test folder in {root!r} ({why})")
    return ["val" if s == reader.val else s for s in found]


def load_digits(split: str) -> ImageSet:
    """scikit-learn's 1,797 8x8 grey digits; a fixed seeded 80/20 split (360 test images)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    idx = order[360:] if split == "train" else order[:360]
    return ImageSet([str(i) for i in range(10)], labels[idx], images[idx].contiguous(), split=split)


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}  # fmt: skip


def load_cifar(name: str, root: str, split: str, download: bool = False) -> ImageSet:
    """CIFAR in the official python format, from `root` or `root/<batches folder>`.

    The official files are pickles, as torchvision reads them: use files from a trusted source.
    """
    folder, train_files, test_files, meta, names_key, labels_key = _CIFAR[name]
    base = Path(root) if root else Path(".")
    if not (base / meta).is_file():
        base = base / folder
    if not (base / meta).is_file() and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root or "."), download=True)
    if not (base / meta).is_file():
        where = base.parent if base.name == folder else base
        raise ValueError(f"no {name} data in {where} (expected {folder}/{meta}; set download=true)")
    images, labels = [], []
    for file in train_files if split == "train" else test_files:
        batch = _unpickle(base / file)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[labels_key])
    classes = list(_unpickle(base / meta)[names_key])
    labels = torch.tensor(labels, dtype=torch.int64)
    return ImageSet(classes, labels, torch.from_numpy(np.concatenate(images)), split=split)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")
