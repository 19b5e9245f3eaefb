"""Image files to model inputs with a checkpoint's own preprocessing (resize, crop, mean, std)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def eval_transform(preprocessing: dict[str, Any]):
    """Resize the shorter side, centre-crop, to tensor, normalise: the usual evaluation transform."""
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    return T.Compose(
        [
            T.Resize(int(preprocessing["resize"]), interpolation=interpolation),
            T.CenterCrop(int(preprocessing["crop"])),
            T.ToTensor(),
            T.Normalize(preprocessing["mean"], preprocessing["std"]),
        ]
    )


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus image files found (recursively, sorted) in folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


def read_image(path: Path, transform) -> Tensor:
    """One image as a normalised tensor; raises OSError/ValueError for unreadable files."""
    from PIL import Image

    with Image.open(path) as img:
        return transform(img.convert("RGB"))


def batched_images(
    paths: Sequence[Path], transform, batch_size: int
) -> Iterator[tuple[list[Path], Tensor | None, dict[Path, str]]]:
    """Batches of (paths, tensors of the readable ones in order, {unreadable path: reason})."""
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        tensors, failed = [], {}
        for path in chunk:
            try:
                tensors.append(read_image(path, transform))
            except (OSError, ValueError) as e:  # PIL: missing, truncated, not an image
                failed[path] = str(e).splitlines()[0] if str(e) else type(e).__name__
        yield chunk, (torch.stack(tensors) if tensors else None), failed
