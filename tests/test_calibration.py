"""Calibration images for int8: the sample of a folder and its seeded held-out quarter."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resnext.data.calibration import HELD_OUT_SHARE, calibration_split, hold_out, sample_paths
from resnext.data.preprocessing import Preprocessing

PRE = {"resize": 8, "crop": 8, "mean": [0.5], "std": [0.25], "interpolation": "bilinear"}


def write_folder(root, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (10, 12), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")


@pytest.mark.parametrize("n", [1, 3, 4, 9, 20])
def test_a_seeded_quarter_is_held_out(tmp_path, n):
    paths = [tmp_path / f"{i}.png" for i in range(n)]
    fit, held = hold_out(paths)
    assert len(held) == n // HELD_OUT_SHARE and sorted(fit + held) == sorted(paths)
    assert fit == [p for p in paths if p in fit] and held == [p for p in paths if p in held]
    assert hold_out(paths) == (fit, held)


def test_the_sample_spreads_over_the_classes_and_splits(tmp_path):
    write_folder(tmp_path / "train", classes=3, per_class=5)
    paths = sample_paths(tmp_path / "train", 6)
    assert sorted(p.parent.name for p in paths) == ["c0", "c0", "c1", "c1", "c2", "c2"]
    fit, held = calibration_split(tmp_path / "train", Preprocessing.from_dict(PRE, 1), 6)
    assert [len(b) for b in fit] == [5] and [len(b) for b in held] == [1]
    one, none = calibration_split(tmp_path / "train", Preprocessing.from_dict(PRE, 1), 1)
    assert [len(b) for b in one] == [1] and none == []


def test_a_missing_folder_or_no_readable_image_is_one_error(tmp_path):
    pre = Preprocessing.from_dict(PRE, 1)
    with pytest.raises(ValueError, match="does not exist"):
        calibration_split(tmp_path / "none", pre)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="no readable calibration images"):
        calibration_split(tmp_path / "bad", pre)
