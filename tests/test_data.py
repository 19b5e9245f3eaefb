"""Datasets read into the same in-memory form; batches do not depend on the world size."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resnext.data import eval_indices, load_dataset, train_indices
from resnext.transforms import crop_flip, draw_crop_flip, eval_batch, eval_image, mix

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def write_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    """The official python format (data_batch_1..5, test_batch, batches.meta), tiny."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = (
            test
            if name == "test_batch"
            else rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        )
        batch = {"batch_label": name, "data": data, "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return test


def test_cifar10_python_format(tmp_path):
    test = write_cifar10(tmp_path)
    train = load_dataset("cifar10", str(tmp_path), "train")
    val = load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"), "val")
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert val.classes[3] == "cat" and val.labels.tolist() == [0, 1, 2, 3]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert val.images[1, 1, 2, 5] == test[1, 1024 + 2 * 32 + 5]


def test_cifar100_python_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        data = {"data": np.zeros((3, 3072), np.uint8), "fine_labels": [5, 7, 99]}
        (folder / name).write_bytes(pickle.dumps(data))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    val = load_dataset("cifar100", str(tmp_path), "val")
    assert len(val.classes) == 100 and val.labels.tolist() == [5, 7, 99]


def test_missing_cifar_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no cifar10 data"):
        load_dataset("cifar10", str(tmp_path), "train")


def test_digits_split():
    train, val = load_dataset("digits", "", "train"), load_dataset("digits", "", "val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.max() == 255


def make_folder(root: Path, per_class: int = 2, classes: tuple = ("cat", "dog", "ship")) -> Path:
    """A few real CIFAR-10 JPEGs copied into an ImageNet-style tree under tmp."""
    for split, src in (("train", "train"), ("val", "test")):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                shutil.copy(SHARED / src / c / f"{i:04d}.jpg", root / split / c / f"{i}.jpg")
    return root


def test_folder_small_images_are_decoded_into_memory(tmp_path):
    make_folder(tmp_path)
    val = load_dataset("folder", str(tmp_path), "val")
    assert val.classes == ["cat", "dog", "ship"] and val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert val.images.shape == (6, 3, 32, 32) and val.images.dtype == torch.uint8
    files = load_dataset("folder", str(tmp_path), "val", in_memory="no")
    assert files.images is None and len(files.paths) == 6
    with pytest.raises(ValueError, match="no val or test folder"):
        load_dataset("folder", str(tmp_path / "train"), "val")


def test_global_batches_are_split_between_ranks():
    single = train_indices(50, 8, seed=3, epoch=1)
    halves = [train_indices(50, 8, seed=3, epoch=1, rank=r, world=2) for r in (0, 1)]
    assert len(single) == 6  # the last partial batch is dropped
    for s, (a, b) in enumerate(zip(*halves)):
        assert torch.equal(torch.cat([a, b]), single[s])
    assert not torch.equal(train_indices(50, 8, 3, 2)[0], single[0])
    shares = torch.cat([torch.cat(eval_indices(11, 4, r, 3)) for r in range(3)])
    assert sorted(shares.tolist()) == list(range(11))


def test_crop_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    zero, no = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool)
    two = torch.full((2,), 2)
    assert torch.equal(crop_flip(x, 2, two, two, no), x)
    assert torch.equal(crop_flip(x, 2, two, two, ~no), x.flip(-1))
    shifted = crop_flip(x, 2, zero, two, no)  # two rows of padding on top
    assert torch.equal(shifted[:, :, 2:], x[:, :, :2]) and shifted[:, :, :2].abs().sum() == 0
    oy, ox, flip = draw_crop_flip(100, 4, True, torch.Generator().manual_seed(0))
    assert oy.max() <= 8 and ox.min() >= 0 and 20 < flip.sum() < 80


def test_eval_views_match_per_image_and_batch():
    x = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8)
    assert eval_batch(x, 40, 32, False).shape == (2, 3, 32, 32)
    ten = eval_batch(x, 40, 32, True)
    assert ten.shape == (2, 10, 3, 32, 32)
    assert torch.equal(ten[0], eval_image(x[0], 40, 32, True))
    assert torch.equal(ten[:, 9], ten[:, 4].flip(-1))  # the mirrored centre crop


def test_mix_gives_soft_targets():
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        xm, t = mix(x, y, 4, mixup, cutmix, torch.Generator().manual_seed(1))
        assert xm.shape == x.shape and torch.allclose(t.sum(1), torch.ones(8))
