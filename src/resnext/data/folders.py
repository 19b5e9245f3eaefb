"""Image folders in the ImageNet layout, `root/<split>/<class>/.../<image>`, as torchvision's
ImageFolder reads them: class folders sorted, images found recursively in sorted order.

Symbolic links are followed, but each real file is read once however links reach it: a link
loop (`ln -s . loop`) or a second link to a folder already read is skipped with one warning.
Small images are then held in memory (memory.py); every image goes through the one decoder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from resnext.data.images import IMAGE_SUFFIXES, MAX_PIXELS
from resnext.data.imageset import ImageSet, note_bad
from resnext.data.memory import hold_small

log = logging.getLogger("resnext.data.datasets")


def class_files(folder: Path) -> list[Path]:
    """Every file under a class folder, recursively (symlinks followed), in ImageFolder's order;
    hidden files and folders are left out, and each real file and folder is read once."""
    walked, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(root))
        # Real folders before links, so that a link to a folder read anyway is the one skipped.
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(root, d)), d))
        dirs[:] = [d for d in dirs if not d.startswith(".") and _new_folder(root, d, seen)]
        walked.append((root, names))
    files, real = [], set()
    for root, names in sorted(walked):
        for n in sorted(names):
            target = os.path.realpath(os.path.join(root, n))
            if not n.startswith(".") and target not in real:
                real.add(target)
                files.append(Path(root) / n)
    return files


def _new_folder(root: str, name: str, seen: set[str]) -> bool:
    """Whether `root/name` leads to a folder not read yet; a link that does not is noted once.

    A link up to the folder itself or above it (`ln -s . loop`, `ln -s .. up`) is a loop even
    when the folder it leads to was never read: following it would reach other classes.
    """
    path = os.path.join(root, name)
    target, here = os.path.realpath(path), os.path.realpath(root)
    loop = here == target or here.startswith(target.rstrip(os.sep) + os.sep)
    if not loop and target not in seen:
        seen.add(target)
        return True
    what = "a symbolic-link loop" if loop else "a second way to a folder read once already"
    log.warning("skipping %s: %s leads to %s", what, path, target)
    return False


def load_folder(
    root: str,
    split: str,
    in_memory: str = "auto",
    bad_images: str = "skip",
    min_size: int = 1,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> ImageSet:
    """`root/<split>/<class>/...`; `split` is "train", "val" or "test".

    Bad files are skipped with one warning each, or fatal with bad_images="error"; small
    images are checked here (they are decoded now), large ones when a batch first reads them.
    """
    base = Path(root) / split
    if not base.is_dir():
        why = f"{root} does not exist" if not Path(root).exists() else f"expected {base}/<class>/"
        raise ValueError(f"no {split} folder in {root!r} ({why})")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {base} (expected {base}/<class>/<image>)")
    data = ImageSet(classes, torch.zeros(0, dtype=torch.int64), on_bad=bad_images, split=split,
                    min_size=min_size, memory_size=size, max_pixels=max_pixels)  # fmt: skip
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in class_files(base / c):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(i)
            else:
                note_bad(data, str(p), "not an image file")
    data.labels, data.paths = torch.tensor(labels, dtype=torch.int64), paths
    hold_small(data, in_memory)
    counts = torch.bincount(data.labels, minlength=len(classes)).tolist()
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if len(empty) == len(classes):
        raise ValueError(f"no readable images in {base}/<class>/")
    if empty:
        raise ValueError(f"class folder {base / empty[0]} holds no readable images")
    return data
