"""Datasets (image folder, CIFAR-10/100 python format, scikit-learn digits) and their batches.

Small images are decoded once and held in memory as uint8 (issue 3), so that CPU epochs are
bound by compute; large ones (ImageNet) are decoded per image by DataLoader workers. Batches are
cut from one permutation per (seed, epoch) of the *global* batch, each rank taking a contiguous
slice, so a run sees the same batches whatever the number of processes.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from resnext.config import TrainConfig
from resnext.transforms import (
    crop_flip,
    draw_crop_flip,
    eval_batch,
    eval_image,
    normalize,
    train_transform,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
SMALL_IMAGE = 64  # in_memory="auto" decodes into memory when images are at most this size


@dataclass
class ImageSet:
    """Labelled images: decoded uint8 `images` (N, C, H, W) in memory, or file `paths`."""

    classes: list[str]
    labels: Tensor
    images: Tensor | None = None
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return 3 if self.images is None else self.images.shape[1]

    def subset(self, limit: int) -> ImageSet:
        """The first `limit` images (all of them for 0)."""
        if not limit or limit >= len(self):
            return self
        images = None if self.images is None else self.images[:limit]
        paths = None if self.paths is None else self.paths[:limit]
        return ImageSet(self.classes, self.labels[:limit], images, paths)


def load_dataset(
    name: str, root: str, split: str, in_memory: str = "auto", download: bool = False
) -> ImageSet:
    """Load `split` ("train" or "val") of a dataset by its `--dataset` name."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if name == "digits":
        return load_digits(split)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, split, download)
    if name == "folder":
        return load_folder(root, split, in_memory)
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


def load_folder(root: str, split: str, in_memory: str = "auto") -> ImageSet:
    """`root/train/<class>/*` and `root/val/<class>/*` (or `root/test/`), ImageNet style."""
    names = ["train"] if split == "train" else ["val", "test"]
    base = next((Path(root) / n for n in names if (Path(root) / n).is_dir()), None)
    if not root or base is None:
        raise ValueError(f"no {' or '.join(names)} folder in {root!r}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (base / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise ValueError(f"no images in {base}/<class>/")
    data = ImageSet(classes, torch.tensor(labels, dtype=torch.int64), paths=paths)
    if in_memory == "yes" or (in_memory == "auto" and _is_small(paths[0])):
        data = ImageSet(classes, data.labels, _decode_all(paths))
    return data


def _is_small(path: Path) -> bool:
    with Image.open(path) as im:
        return max(im.size) <= SMALL_IMAGE


def _decode_all(paths: list[Path]) -> Tensor:
    log.info("decoding %d images into memory", len(paths))
    first = np.asarray(open_rgb(paths[0]))
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    for i, p in enumerate(paths):
        arr = np.asarray(open_rgb(p))
        if arr.shape != first.shape:
            raise ValueError(f"{p} is {arr.shape[:2]}, not {first.shape[:2]}; set in_memory=no")
        out[i] = arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB."""
    with Image.open(path) as im:
        return im.convert("RGB")


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of one epoch: a function of (seed, epoch) only, so resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_indices(
    n: int, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[Tensor]:
    """This rank's slice of every full global batch of an epoch (the last partial one dropped)."""
    steps = n // batch
    if steps == 0:
        raise ValueError(f"the training set ({n} images) is smaller than one batch ({batch})")
    local = batch // world
    perm = epoch_permutation(n, seed, epoch)
    return [perm[s * batch + rank * local : s * batch + (rank + 1) * local] for s in range(steps)]


def eval_indices(n: int, batch: int, rank: int = 0, world: int = 1) -> list[Tensor]:
    """Every image exactly once over all ranks (no padding, so counts are exact)."""
    mine = torch.arange(rank, n, world)
    return list(mine.split(batch)) if len(mine) else []


class PerImage(torch.utils.data.Dataset):
    """One image at a time through `transform`, seeded by (seed, epoch, index) for resume."""

    def __init__(self, data: ImageSet, transform: Callable, seed: int | None = None) -> None:
        self.data, self.transform, self.seed = data, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if self.seed is not None:
            torch.manual_seed((self.seed * 100_003 + self.epoch) * 10_000_019 + i)
        image = (
            self.data.images[i] if self.data.images is not None else open_rgb(self.data.paths[i])
        )
        return self.transform(image), int(self.data.labels[i])


def loader(
    dataset: PerImage, batches: list[Tensor], workers: int, pin: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    """A DataLoader over precomputed index batches."""
    return iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=workers,
            pin_memory=pin,
        )
    )


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator for the random choices of one step, the same on every rank and on resume."""
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + step)


def train_batches(
    data: ImageSet, cfg: TrainConfig, epoch: int, start: int, rank: int, world: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """The training batches of `epoch` for this rank, from batch `start` on (for resume).

    In-memory images are augmented a whole batch at a time where they sit (on the GPU if moved
    there); the random draws cover the global batch, so they do not depend on the world size.
    """
    batches = train_indices(len(data), cfg.batch_size, cfg.seed, epoch, rank, world)[start:]
    if data.images is None or cfg.augment == "inception":
        transform = train_transform(
            cfg.augment, cfg.train_size, cfg.pad, cfg.hflip, cfg.color_jitter, cfg.lighting,
            cfg.mean, cfg.std,
        )  # fmt: skip
        ds = PerImage(data, transform, seed=cfg.seed)
        ds.epoch = epoch
        yield from loader(ds, batches, cfg.workers, data.labels.is_cuda)
        return
    local = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    for step, b in enumerate(batches, start):
        b = b.to(data.images.device)
        x = normalize(data.images[b], cfg.mean, cfg.std)
        if cfg.augment == "crop_flip":
            gen = step_generator(cfg.seed, epoch, step)
            oy, ox, flip = draw_crop_flip(cfg.batch_size, cfg.pad, cfg.hflip, gen)
            x = crop_flip(x, cfg.pad, oy[local], ox[local], flip[local])
        yield x, data.labels[b]


def eval_batches(
    data: ImageSet,
    batch: int,
    view: tuple[int, int, bool],
    mean: Sequence[float],
    std: Sequence[float],
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised evaluation views `view = (resize, crop, ten_crop)` of this rank's share."""
    batches = eval_indices(len(data), batch, rank, world)
    if data.images is not None:
        for b in batches:
            b = b.to(data.images.device)
            yield normalize(eval_batch(data.images[b], *view), mean, std), data.labels[b]
        return
    ds = PerImage(
        data, functools.partial(eval_image, resize=view[0], crop=view[1], ten_crop=view[2])
    )
    for x, y in loader(ds, batches, workers, torch.cuda.is_available()):
        yield normalize(x.to(_device(), non_blocking=True), mean, std), y


def _device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
