"""Datasets: image folder, CIFAR-10/100 python format, scikit-learn digits (batches: batches.py).

Small images are decoded once and held in memory as uint8 (issue 3), so that CPU epochs are
bound by compute; large ones (ImageNet) are decoded per image by DataLoader workers. Unreadable
images are skipped with one warning each and counted, or fatal if asked (issue 7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
SMALL_IMAGE = 64  # in_memory="auto" decodes into memory when images are at most this size
# What PIL raises for a zero-byte, truncated or non-image file (issue 7).
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """An unreadable image file while bad_images="error"."""


@dataclass
class ImageSet:
    """Labelled images: decoded uint8 `images` (N, C, H, W) in memory, or file `paths`.

    `bad` holds the unreadable files met so far (skipped, or fatal when `on_bad` is "error").
    """

    classes: list[str]
    labels: Tensor
    images: Tensor | None = None
    paths: list[Path] | None = None
    bad: set[str] = field(default_factory=set)
    on_bad: str = "skip"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return 3 if self.images is None else self.images.shape[1]

    def subset(self, limit: int, seed: int = 0) -> ImageSet:
        """`limit` images spread evenly over the classes, a seeded choice (all for 0).

        The first N files of a class-folder dataset would all be of the first class (issue 7).
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
        return dataclasses.replace(self, labels=self.labels[keep], images=images, paths=paths)


def load_dataset(
    name: str,
    root: str,
    split: str,
    in_memory: str = "auto",
    download: bool = False,
    bad_images: str = "skip",
) -> ImageSet:
    """Load `split` ("train" or "val") of a dataset by its `--dataset` name."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if name == "digits":
        return load_digits(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, split, download)
    if name == "folder":
        return load_folder(root, split, in_memory, bad_images)
    raise ValueError(f"unknown dataset {name!r}")


def load_digits(split: str) -> ImageSet:
    """scikit-learn's 1,797 8x8 grey digits; a fixed seeded 80/20 split (360 test images)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    idx = order[360:] if split == "train" else order[:360]
    return ImageSet([str(i) for i in range(10)], labels[idx], images[idx].contiguous())


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
        raise ValueError(
            f"no {name} data in {root!r} (expected {folder}/{meta}; set download=true)"
        )
    images, labels = [], []
    for file in train_files if split == "train" else test_files:
        batch = _unpickle(base / file)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[labels_key])
    classes = list(_unpickle(base / meta)[names_key])
    return ImageSet(
        classes, torch.tensor(labels, dtype=torch.int64), torch.from_numpy(np.concatenate(images))
    )


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_folder(
    root: str, split: str, in_memory: str = "auto", bad_images: str = "skip"
) -> ImageSet:
    """`root/train/<class>/*` and `root/val/<class>/*` (or `root/test/`), ImageNet style.

    Unreadable files are skipped with one warning each, or fatal with bad_images="error"; small
    images are checked here (they are decoded now), large ones when a batch first reads them.
    """
    names = ["train"] if split == "train" else ["val", "test"]
    base = next((Path(root) / n for n in names if (Path(root) / n).is_dir()), None)
    if not root or base is None:
        raise ValueError(f"no {' or '.join(names)} folder in {root!r}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {base} (expected {base}/<class>/<image>)")
    data = ImageSet(classes, torch.zeros(0, dtype=torch.int64), on_bad=bad_images)
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted(f for f in (base / c).iterdir() if not f.name.startswith(".")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(p)
                labels.append(i)
            else:
                note_bad(data, str(p), "not an image file")
    data.labels, data.paths = torch.tensor(labels, dtype=torch.int64), paths
    if in_memory == "yes" or (in_memory == "auto" and _is_small(data)):
        data.images, kept = _decode_all(data)
        data.labels, data.paths = data.labels[kept], None
    counts = torch.bincount(data.labels, minlength=len(classes)).tolist()
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if len(empty) == len(classes):
        raise ValueError(f"no readable images in {base}/<class>/")
    if empty:
        raise ValueError(f"class folder {base / empty[0]} holds no readable images")
    return data


def note_bad(data: ImageSet, path: str, reason: str) -> None:
    """Skip an unreadable file with one warning, or raise if `data.on_bad` is "error"."""
    if data.on_bad == "error":
        raise BadImageError(f"bad image {path}: {reason} (bad_images=skip skips such files)")
    if path not in data.bad:
        data.bad.add(path)
        log.warning("skipping bad image %s: %s", path, reason)


def describe_error(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0] or type(e).__name__


def _is_small(data: ImageSet) -> bool:
    """Whether the first readable image is small enough to hold the set in memory."""
    for p in data.paths or []:
        try:
            with Image.open(p) as im:
                return max(im.size) <= SMALL_IMAGE
        except BAD_IMAGE_ERRORS as e:
            note_bad(data, str(p), describe_error(e))
    return False


_decoded: dict | None = None  # set by `decode_once`


@contextlib.contextmanager
def decode_once() -> Iterator[None]:
    """Within this block each image folder is decoded once per process: a study (issue 4)
    trains many runs on one data set, and decoding 60,000 JPEGs takes about a minute."""
    global _decoded
    _decoded = {}
    try:
        yield
    finally:
        _decoded = None


def _decode_all(data: ImageSet) -> tuple[Tensor, Tensor]:
    """Every readable image as uint8 (N, C, H, W), and the indices of those read."""
    key = (tuple(str(p) for p in data.paths or []), data.on_bad)
    if _decoded is not None and key in _decoded:
        images, kept, bad = _decoded[key]
        for path, reason in bad:
            note_bad(data, path, reason)
        return images, kept
    bad_before = set(data.bad)
    images, kept = _decode_files(data)
    if _decoded is not None:
        bad = [(b, "unreadable (decoded earlier in this process)") for b in data.bad - bad_before]
        _decoded[key] = (images, kept, bad)
    return images, kept


def _decode_files(data: ImageSet) -> tuple[Tensor, Tensor]:
    paths = data.paths or []
    log.info("decoding %d images into memory", len(paths))
    out, kept = None, []
    for i, p in enumerate(paths):
        try:
            arr = np.asarray(open_rgb(p))
        except BAD_IMAGE_ERRORS as e:
            note_bad(data, str(p), describe_error(e))
            continue
        if out is None:
            out = np.empty((len(paths), *arr.shape), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise ValueError(f"{p} is {arr.shape[:2]}, not {out.shape[1:3]}; set in_memory=no")
        out[len(kept)] = arr
        kept.append(i)
    if out is None:
        out = np.empty((0, 1, 1, 3), dtype=np.uint8)
    images = torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(kept, dtype=torch.int64)


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB (greyscale, CMYK, palette and RGBA files are converted)."""
    with Image.open(path) as im:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # PIL warns on palette -> RGB with transparency
        return im.convert("RGB")
