"""Full-size photographs for tests: crops of scikit-learn's two sample photos (china.jpg and
flower.jpg, 640x427), written as JPEGs of a few hundred pixels in an image-folder layout.

Each class takes its crops from its own region of the photos, tinted per class, so the classes
differ; every image is distinct. Nothing is downloaded (the photos ship with scikit-learn).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_TINTS = ((1.0, 0.8, 0.6), (0.6, 1.0, 0.8), (0.8, 0.6, 1.0), (1.0, 1.0, 0.6))


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def photo(label: int, index: int, size: tuple[int, int] = (160, 120)):
    """A `size` (width, height) RGB PIL image: a crop of a sample photo, tinted per class."""
    from PIL import Image

    photos = _photos()
    src = photos[(label + index) % len(photos)]
    h, w = src.shape[:2]
    cw, ch = size[0] * 2, size[1] * 2  # crops are halved: a sharper, photo-like picture
    x = (37 * index + 101 * label) % (w - cw)
    y = (23 * index + 59 * label) % (h - ch)
    crop = src[y : y + ch, x : x + cw].astype(np.float64) * np.array(_TINTS[label % len(_TINTS)])
    return Image.fromarray(crop.clip(0, 255).astype(np.uint8)).resize(size, Image.BILINEAR)


def write_photo_folder(
    root: Path,
    classes: Iterable[str] = ("cat", "dog", "ship"),
    per_class: int = 6,
    splits: Iterable[str] = ("train", "val"),
    size: tuple[int, int] = (160, 120),
) -> Path:
    """`root/<split>/<class>/<i>.jpg`: distinct photo crops, quality 90 JPEGs."""
    for offset, split in enumerate(splits):
        for label, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                photo(label, offset * 31 + i, size).save(folder / f"{i}.jpg", quality=90)
    return Path(root)
