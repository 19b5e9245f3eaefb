"""Calibration images for int8: a sample of a folder, split into images to fit and images held out.

The sample spreads over the classes of a folder of class folders (`ImageSet.subset`, seeded) or
takes images at even steps through a plain folder's sorted files. A seeded quarter of it is held
out, so that int8 is judged on images its ranges were not fitted to (fewer than four images:
none is held out, and the report says so).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from resnext.data.images import batched_images, list_images
from resnext.data.preprocessing import Preprocessing

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256  # ranges settle well before this (512 gave the same top-1 on CIFAR)
CALIBRATION_BATCH = 32
HELD_OUT_SHARE = 4  # one image in four of the sample is held out (rounded down)


def sample_paths(folder: str | os.PathLike, limit: int = CALIBRATION_IMAGES) -> list[Path]:
    """Up to `limit` image files of `folder`: spread evenly over its class folders (a seeded
    choice), or at even steps through a plain folder's sorted files."""
    from resnext.data import folders
    from resnext.data.bad_images import BadImages
    from resnext.data.datasets import load_files

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"calibration folder {root} does not exist")
    if limit < 1:
        raise ValueError(f"--calibration-images must be positive, got {limit}")
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        bad = BadImages()
        scan = folders.scan(str(root.parent), root.name, bad)
        data = load_files(scan, root.name, bad, "no", None).subset(limit)
        return [Path(data.name(i)) for i in range(len(data))]
    found = list_images([root])
    return found[:: max(1, len(found) // limit)][:limit]


def hold_out(paths: Sequence[Path], seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(images to fit, images held out): a seeded `1 / HELD_OUT_SHARE` of `paths` held out,
    both parts in the order of `paths`."""
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))
    held = set(order[: len(paths) // HELD_OUT_SHARE].tolist())
    fit = [p for i, p in enumerate(paths) if i not in held]
    return fit, [p for i, p in enumerate(paths) if i in held]


def image_batches(
    paths: Sequence[Path], preprocessing: Preprocessing, batch_size: int = CALIBRATION_BATCH
) -> list[Tensor]:
    """The readable images of `paths` through `preprocessing`, in batches; unreadable files are
    skipped with a warning."""
    batches = []
    for _, batch, failed in batched_images(
        paths, preprocessing.transform(), preprocessing.channels, batch_size
    ):
        for path, why in failed.items():
            log.warning("calibration: skipping %s (%s)", path, why)
        if batch is not None:
            batches.append(batch)
    return batches


def calibration_batches(
    folder: str | os.PathLike,
    preprocessing: Preprocessing,
    limit: int = CALIBRATION_IMAGES,
    batch_size: int = CALIBRATION_BATCH,
) -> list[Tensor]:
    """Up to `limit` images of `folder` (`sample_paths`), all of them, through `preprocessing`
    in batches; ValueError if none is readable."""
    return _some_batches(sample_paths(folder, limit), folder, preprocessing, batch_size)


def calibration_split(
    folder: str | os.PathLike,
    preprocessing: Preprocessing,
    limit: int = CALIBRATION_IMAGES,
    batch_size: int = CALIBRATION_BATCH,
) -> tuple[list[Tensor], list[Tensor]]:
    """(batches to fit, held-out batches) of a sample of up to `limit` images of `folder`; the
    held-out list is empty for a sample of fewer than `HELD_OUT_SHARE` images."""
    fit, held = hold_out(sample_paths(folder, limit))
    batches = _some_batches(fit, folder, preprocessing, batch_size)
    return batches, image_batches(held, preprocessing, batch_size)


def _some_batches(
    paths: Sequence[Path], folder: str | os.PathLike, preprocessing: Preprocessing, batch_size: int
) -> list[Tensor]:
    """`image_batches`, or ValueError naming `folder` when no image of `paths` is readable."""
    batches = image_batches(paths, preprocessing, batch_size)
    if not batches:
        raise ValueError(f"no readable calibration images in {folder}")
    return batches
