"""Image folders in the ImageNet layout, `root/<split>/<class>/.../<image>`, as torchvision's
ImageFolder reads them: class folders sorted, images found recursively in sorted order.

Symbolic links are followed, but each real file is read once however links reach it: a link
loop (`ln -s . loop`) or a second link to a folder already read is skipped with one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from resnext.data.bad_images import BadImages
from resnext.data.images import IMAGE_SUFFIXES
from resnext.data.records import FileRecords
from resnext.data.samples import Scan

log = logging.getLogger(__name__)
VAL = "val"  # the held-out split's name


def class_files(folder: Path, claimed: set[str] | None = None,
                owners: dict[str, str] | None = None) -> list[Path]:  # fmt: skip
    """Every file under a class folder, recursively (symlinks followed), in ImageFolder's order;
    hidden files and folders are left out, and each real file and folder is read once.

    `claimed` holds the real paths already read (by earlier classes; updated here); a file that
    really lies in another class folder of `owners` (real path -> folder) is left to it.
    """
    claimed = set() if claimed is None else claimed
    mine = os.path.realpath(folder)
    walked = list(_walk(str(folder), {mine}))
    files, elsewhere = [], 0
    for root, real_root, names in sorted(walked):
        for n, link in sorted(names):
            path = os.path.join(root, n)
            real = os.path.realpath(path) if link else os.path.join(real_root, n)
            inside = real.startswith(mine + os.sep)  # the usual case, without a walk up
            owner = mine if inside else _owner(real, owners or {})
            if real in claimed or owner not in (None, mine):
                elsewhere += 1
                continue
            claimed.add(real)
            files.append(Path(path))
    if elsewhere:
        log.warning("skipping %d files that links in %s lead to, read once already or held by "
                    "another class folder", elsewhere, folder)  # fmt: skip
    return files


def _walk(top: str, seen: set[str]) -> Iterator[tuple[str, str, list[tuple[str, bool]]]]:
    """(folder, its real path, [(file name, is a link)]) for `top` and every folder below it,
    links followed once each (`_new_folder`); hidden files and folders left out.

    os.scandir tells links apart without a system call per file (os.walk does not say).
    """
    stack = [top]
    while stack:
        root = stack.pop()
        files, dirs = [], []
        try:
            with os.scandir(root) as entries:
                for e in entries:
                    if not e.name.startswith("."):
                        (dirs if e.is_dir() else files).append((e.name, e.is_symlink()))
        except OSError:  # unreadable folder: nothing in it is read (as os.walk does)
            continue
        yield root, os.path.realpath(root), files
        # Real folders before links, so that a link to a folder read anyway is the one skipped.
        dirs.sort(key=lambda d: (d[1], d[0]))
        stack += reversed([os.path.join(root, d) for d, _ in dirs if _new_folder(root, d, seen)])


def _owner(real: str, owners: dict[str, str]) -> str | None:
    """The real class folder that holds the real path `real`, if any."""
    for parent in Path(real).parents:
        if str(parent) in owners:
            return str(parent)
    return None


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


def splits(root: str) -> list[str]:
    """The split folders present in `root`: train, val, test."""
    return [s for s in ("train", VAL, "test") if root and (Path(root) / s).is_dir()]


def scan(root: str, split: str, bad: BadImages) -> Scan:
    """The images of `root/<split>/<class>/...`; `split` is "train", "val" or "test".

    Every class folder must keep an image (datasets.py checks once bad files are left out).
    """
    base = Path(root) / split
    if not base.is_dir():
        why = f"{root} does not exist" if not Path(root).exists() else f"expected {base}/<class>/"
        raise ValueError(f"no {split} folder in {root!r} ({why})")
    # A class folder that is a link up to the split folder or above is a loop, not a class.
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and _new_folder(str(base), p.name, set()))  # fmt: skip
    if not classes:
        raise ValueError(f"no class folders in {base} (expected {base}/<class>/<image>)")
    paths, labels, claimed = [], [], set()
    owners = {os.path.realpath(base / c): c for c in classes}
    for i, c in enumerate(classes):
        for p in class_files(base / c, claimed, owners):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(i)
            else:
                bad.note(str(p), "not an image file")
    return Scan(FileRecords(paths), labels, classes, str(base),
                f"no readable images in {base}/<class>/", whole_classes=base)  # fmt: skip
