"""Datasets by their `--dataset` name: image folder (folders.py), WebDataset shards (shards.py),
parquet files (parquet.py), CIFAR-10/100 python format, scikit-learn digits; and the one rule for
which held-out split is read.

Every set is an `ImageSet` (imageset.py); batches.py turns it into batches.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from resnext.data import parquet, shards
from resnext.data.folders import load_folder
from resnext.data.images import MAX_PIXELS
from resnext.data.imageset import BAD_IMAGE_ERRORS, BadImageError, ImageSet, note_bad
from resnext.data.memory import decode_once

__all__ = ["BAD_IMAGE_ERRORS", "BadImageError", "ImageSet", "decode_once", "held_out_split",
           "load_dataset", "note_bad"]  # fmt: skip

SPLITS = ("train", "val", "test", "auto")
FILE_DATASETS = ("folder", "wds", "parquet")  # images read from files, at any size
SHARDED = {"wds": shards, "parquet": parquet}  # their held-out split is named "validation"


def load_dataset(
    name: str,
    root: str,
    split: str,
    in_memory: str = "auto",
    download: bool = False,
    bad_images: str = "skip",
    min_size: int = 1,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> ImageSet:
    """Load `split` of a dataset by its `--dataset` name.

    `split` is "train", "val", "test" or "auto" (the held-out split `held_out_split` picks;
    "val" is the "validation" split of shards); the returned set's `split` names the one read.
    Images whose shorter side is below `min_size` are bad images (skipped or fatal as
    `bad_images` says), as are those of more than `max_pixels` pixels. Images decoded into
    memory are brought to `size` x `size` (shorter side resized, centre crop) when `size` is
    given (memory.py).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if split != "train":
        split = held_out_split(name, root, split)
    if name == "digits":
        return load_digits(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, split, download)
    if name == "folder":
        return load_folder(root, split, in_memory, bad_images, min_size, size, max_pixels)
    if name == "wds":
        return shards.load_wds(root, split, in_memory, bad_images, min_size, size, max_pixels)
    if name == "parquet":
        return parquet.load_parquet(root, split, in_memory, bad_images, min_size, size, max_pixels)
    raise ValueError(f"unknown dataset {name!r}")


def held_out_split(name: str, root: str, asked: str = "auto") -> str:
    """The held-out split to evaluate on: "val" or "test".

    A folder may hold val/, test/ or both: "auto" takes val/ (the split for choosing a model;
    test/ stays untouched until asked for), else test/. Shards name theirs "validation" (read
    for "auto" and "val") and "test". CIFAR and digits have one held-out split, their test set.
    """
    if asked not in ("auto", "val", "test"):
        raise ValueError(f"the held-out split is 'val' or 'test', got {asked!r}")
    if name in SHARDED:
        present = SHARDED[name].held_out_splits(root)
        if not present:
            raise ValueError(f"no validation or test {name} shards in {root!r}")
        want = present[0] if asked == "auto" else "test" if asked == "test" else "validation"
        if want not in present:
            raise ValueError(f"no {want} {name} shards in {root} (it holds {', '.join(present)})")
        return want
    if name != "folder":
        if asked == "val":
            raise ValueError(f"{name} has no val split; its held-out split is test")
        return "test"
    present = [s for s in ("val", "test") if root and (Path(root) / s).is_dir()]
    if not present:
        where = f"{root} does not exist" if root and not Path(root).exists() else "none found"
        raise ValueError(f"no val or test folder in {root!r} ({where})")
    if asked == "auto":
        return present[0]
    if asked not in present:
        raise ValueError(f"no {asked} folder in {root} (it holds {', '.join(present)})")
    return asked


def splits_present(name: str, root: str) -> list[str]:
    """Every split a file data set holds, training first (what `pack` copies)."""
    if name == "folder":
        found = [s for s in ("train", "val", "test") if (Path(root) / s).is_dir()]
        if not found:
            why = "it does not exist" if not Path(root).exists() else "expected train/<class>/"
            raise ValueError(f"no train, val or test folder in {root!r} ({why})")
        return found
    if name in SHARDED:
        held_out = SHARDED[name].held_out_splits(root)
        return ["train", *("val" if s == "validation" else s for s in held_out)]
    raise ValueError(f"only {', '.join(FILE_DATASETS)} data sets can be packed, not {name!r}")


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
