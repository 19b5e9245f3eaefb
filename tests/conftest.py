"""Shared fixtures: deterministic seeds, small specs, and image folders the tests write.

Tests make their own data: `write_image_folder` writes real pictures (scikit-learn's handwritten
digits, scaled to 32x32 and tinted per class so that they are colour JPEGs with learnable
classes) in the ImageNet layout, plus broken files beside them; `write_photo_folder` writes
full-size-like JPEGs cut from scikit-learn's sample photographs. Only tests that truly need the
CIFAR-10 JPEGs in ../shared/data are marked `needs_cifar`; they skip where it is absent, as in a
user's clone.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

from resnext import ModelSpec

# mutmut learns which tests reach a function from the calls made in the test's own process; an
# index build in a forked child (data/isolated.py) would hide the parquet scan from it. Under
# mutmut the build runs in this process, and the tests of the child itself are left out.
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ
needs_child = pytest.mark.skipif(
    UNDER_MUTMUT, reason="tests the forked child; mutmut sees this process only"
)


def shared_scope(fixture_name: str, config) -> str:
    """The scope of data a module's tests share: the module's, or each test's own under mutmut,
    which would otherwise credit the functions a shared fixture calls to its first test only."""
    return "function" if UNDER_MUTMUT else "module"


@pytest.fixture(autouse=True)
def _scan_in_this_process_under_mutmut(monkeypatch) -> None:
    if UNDER_MUTMUT:
        from resnext.data import isolated

        monkeypatch.setattr(isolated, "can_fork", lambda: False)


def one_line_error(read, path: Path, **kw) -> str:
    """The CheckpointError `read(path, **kw)` raises: one line that names the file."""
    from resnext.files.checkpoint import CheckpointError

    with pytest.raises(CheckpointError) as e:
        read(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    warnings.filterwarnings(
        "ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning
    )


def tiny_spec(**kw) -> ModelSpec:
    """A small CIFAR-template ResNeXt (one block per stage) for fast tests."""
    args = dict(
        template="cifar",
        block="bottleneck",
        depths=(1, 1, 1),
        cardinality=4,
        base_width=4,
        num_classes=10,
    )
    return ModelSpec(**(args | kw))


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking BN statistics and affine terms, so that eval-mode comparisons test BN."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


CIFAR_JPEGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
needs_cifar = pytest.mark.skipif(
    not (CIFAR_JPEGS / "train").is_dir(),
    reason=f"needs the CIFAR-10 JPEGs in {CIFAR_JPEGS} (absent in a plain clone)",
)
CLASSES = ("cat", "dog", "ship")
_TINTS = ((1.0, 0.6, 0.2), (0.2, 0.9, 0.5), (0.4, 0.5, 1.0), (0.9, 0.9, 0.2), (0.7, 0.2, 0.9))


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def digit_image(label: int, index: int, size: int = 32):
    """The `index`-th handwritten `label` as a `size` px RGB PIL image, tinted per class."""
    from PIL import Image

    images, target = _digits()
    picks = np.flatnonzero(target == label % 10)
    grey = Image.fromarray(images[picks[index % len(picks)]]).resize((size, size), Image.BICUBIC)
    tint = np.array(_TINTS[label % len(_TINTS)])
    rgb = np.asarray(grey, dtype=np.float64)[..., None] * tint + 20
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def write_image_folder(
    root: Path,
    classes: Iterable[str] = CLASSES,
    per_class: int = 2,
    splits: Iterable[str] = ("train", "val"),
    size: int = 32,
    suffix: str = ".jpg",
) -> Path:
    """`root/<split>/<class>/<i><suffix>`: real digit pictures, distinct images per split."""
    for label, index, path in _folder_files(root, classes, per_class, splits):
        digit_image(label, index, size).save(path.with_suffix(suffix))
    return Path(root)


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


def photo(label: int, index: int, size: tuple[int, int] = (160, 120)):
    """A full-size-like `size` (width, height) RGB PIL image: a crop of one of scikit-learn's
    two sample photographs (640x427; nothing downloaded), from a region and with a tint of its
    class's own, so classes differ and every image is distinct."""
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
    for label, index, path in _folder_files(root, classes, per_class, splits):
        photo(label, index, size).save(path.with_suffix(".jpg"), quality=90)
    return Path(root)


def _folder_files(root: Path, classes: Iterable[str], per_class: int, splits: Iterable[str]):
    """(label, image index, path without suffix) of an image folder's files, folders created;
    indices differ between splits so that no image is in two splits."""
    for offset, split in enumerate(splits):
        for label, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                yield label, offset * 50 + i, folder / str(i)


def write_broken_images(folder: Path) -> dict[str, Path]:
    """Files that look like images and are not: empty, truncated, text, and a 1x1 PNG."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_good.jpg"
    digit_image(0, 0).save(good)
    data = good.read_bytes()
    good.unlink()
    files = {
        "empty": folder / "empty.jpg",
        "truncated": folder / "truncated.jpg",
        "text": folder / "text.png",
        "tiny": folder / "tiny.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["text"].write_text("not an image\n")
    from PIL import Image

    Image.new("RGB", (1, 1), (200, 10, 10)).save(files["tiny"])
    return files


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes of real digit pictures in train/ and val/, two per class and split."""
    return write_image_folder(tmp_path / "images")


# A finished run of the tiny recipe: 1 epoch, 2 steps of 16 digits, 16 validation images.
TINY_RUN = {"epochs": 1, "train_limit": 32, "val_limit": 16}


@pytest.fixture(scope="session")
def _tiny_run_once(tmp_path_factory) -> Path:
    from resnext.training.config import resolve_config
    from resnext.training.train import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(resolve_config("tiny", TINY_RUN), run)
    return run


@pytest.fixture
def tiny_run(_tiny_run_once, tmp_path) -> Path:
    """A finished TINY_RUN (as `resnext train --recipe tiny --epochs 1 --set train_limit=32
    --set val_limit=16` writes it), trained once per session and copied for each test."""
    import shutil

    return Path(shutil.copytree(_tiny_run_once, tmp_path / "run"))
