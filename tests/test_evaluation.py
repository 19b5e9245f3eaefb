"""`evaluate_checkpoint` on a folder of non-square PNGs: the views the model is given are
compared with Pillow + numpy (shorter side resized by PIL, centre or ten crops cut in numpy,
normalised), the reported errors with numpy's top-k over an independently built copy of the
model's logits, and the file's classes, preprocessing and --resize/--crop rules are checked.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from resnext import ModelSpec, Preprocessing, build_model
from resnext.files.checkpoint import save_checkpoint
from resnext.training import evaluation

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]
SIZES = [(23, 19), (19, 26), (32, 21)]  # (width, height): per class, one image of each
PRE = {
    3: Preprocessing(18, 16, "bicubic", (0.5, 0.45, 0.4), (0.25, 0.24, 0.26)),
    1: Preprocessing(17, 15, "bilinear", (0.45,), (0.22,), channels=1),
}
PIL_FILTER = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _spec(channels: int, classes: int) -> ModelSpec:
    return ModelSpec(
        "cifar", "bottleneck", (1, 1, 1), 2, 4, classes, in_channels=channels, base_planes=16
    )


def _folder(root, rng, classes=CLASSES) -> list[tuple[object, int]]:
    """Smooth random colour pictures (upsampled noise), as lossless PNGs: (path, label)."""
    files = []
    for label, name in enumerate(classes):
        (root / "val" / name).mkdir(parents=True)
        for i, size in enumerate(SIZES):
            small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
            image = Image.fromarray(small, "RGB").resize(size, Image.BICUBIC)
            image.save(root / "val" / name / f"{i}.png")
            files.append((root / "val" / name / f"{i}.png", label))
    return files


def _checkpoint(tmp_path, channels: int, classes: int = len(CLASSES), **extra):
    torch.manual_seed(channels)
    model = build_model(_spec(channels, classes)).eval()
    for m in model.modules():  # trained-looking statistics, and logits with clear margins
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.fc.weight.mul_(30)
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(),
               "class_names": CLASSES, "preprocessing": PRE[channels].to_dict(), **extra}  # fmt: skip
    return save_checkpoint(tmp_path / "model.pt", payload), model


def _views(path, pre: Preprocessing, ten_crop: bool) -> np.ndarray:
    """Pillow's resize of the shorter side (longer side rounded down), numpy's crops."""
    image = Image.open(path).convert("L" if pre.channels == 1 else "RGB")
    w, h = image.size
    short = min(w, h)
    size = (pre.resize, h * pre.resize // w) if w == short else (w * pre.resize // h, pre.resize)
    a = np.asarray(image.resize(size, PIL_FILTER[pre.interpolation]), dtype=np.float64) / 255
    a = a.reshape(a.shape[0], a.shape[1], -1)
    a = (a - np.array(pre.mean)) / np.array(pre.std)
    H, W, c = a.shape[0], a.shape[1], pre.crop
    top, left = int(round((H - c) / 2)), int(round((W - c) / 2))
    corners = [(0, 0), (0, W - c), (H - c, 0), (H - c, W - c), (top, left)]
    crops = [a[t : t + c, s : s + c] for t, s in (corners if ten_crop else corners[-1:])]
    if ten_crop:
        crops += [crop[:, ::-1] for crop in crops]
    return np.stack(crops).transpose(0, 3, 1, 2)  # crops, C, H, W


def _errors(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-logits, axis=1)
    return 100 * np.mean(order[:, 0] != y), 100 * np.mean(~(order[:, :5] == y[:, None]).any(1))


@pytest.fixture
def spy(monkeypatch):
    """What evaluate_checkpoint hands to the engine's evaluate."""
    seen = {}
    real = evaluation.evaluate

    def record(model, batches, *args, **kwargs):
        seen["batches"] = list(batches)
        return real(model, seen["batches"], *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", record)
    return seen


@pytest.mark.parametrize(
    "channels, resize, crop, ten_crop",
    [(3, None, None, False), (3, None, 14, False), (3, 20, 12, True), (1, None, None, False),
     (1, 16, 16, False)],  # resize = crop: Table 5's 320x320
)  # fmt: skip
def test_the_model_sees_pillow_s_views_and_the_errors_are_numpy_s(
    tmp_path, spy, channels, resize, crop, ten_crop
):
    files = _folder(tmp_path / "data", np.random.default_rng(channels))
    path, model = _checkpoint(tmp_path, channels)
    r = evaluation.evaluate_checkpoint(
        path, "folder", str(tmp_path / "data"), resize, crop, ten_crop, batch_size=5, workers=0
    )
    file_pre = PRE[channels]
    want_resize = resize if resize is not None else crop if crop is not None else file_pre.resize
    pre = Preprocessing(want_resize, crop or file_pre.crop, file_pre.interpolation,
                        file_pre.mean, file_pre.std, channels)  # fmt: skip
    assert (r["resize"], r["crop"], r["ten_crop"]) == (pre.resize, pre.crop, ten_crop)
    assert (r["checkpoint"], r["split"], r["images"]) == (str(path), "val", len(files))
    x = torch.cat([b[0] for b in spy["batches"]]).double().numpy()
    y = torch.cat([b[1] for b in spy["batches"]]).numpy()
    assert [len(b[1]) for b in spy["batches"]] == [5, 5, 5, 3]
    views = np.stack([_views(p, pre, ten_crop) for p, _ in files])
    assert y.tolist() == [label for _, label in files]
    got = x if ten_crop else x[:, None]
    # torchvision's uint8 resize of the decoded (channels-last) image: measured within two grey
    # levels of Pillow's on these pictures (one where the tensor is contiguous)
    tolerance = 2.01 / 255 / min(pre.std)
    if ten_crop:  # the ten crops in any order
        for mine, theirs in zip(views, got):
            for view in mine:
                assert np.abs(theirs - view).max(axis=(1, 2, 3)).min() <= tolerance
    else:
        assert np.abs(got - views).max() <= tolerance
    with torch.no_grad():
        logits = model(torch.from_numpy(x.reshape(-1, *x.shape[-3:])).float()).double()
    probs = logits.softmax(-1).view(len(y), -1, len(CLASSES)).mean(1).numpy()
    top1, top5 = _errors(probs, y)
    assert r["top1_error"] == pytest.approx(top1) and r["top5_error"] == pytest.approx(top5)
    assert 0 < r["top1_error"] < 100  # the draw tells right from wrong


def test_resize_below_crop_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="--resize 20 is smaller than --crop 24"):
        evaluation.evaluate_checkpoint(tmp_path / "absent.pt", "folder", "", 20, 24)


def test_by_default_one_centre_crop_and_the_default_workers(tmp_path, monkeypatch, spy):
    _folder(tmp_path / "data", np.random.default_rng(0))
    path, _ = _checkpoint(tmp_path, 3)
    asked = []
    monkeypatch.setattr(evaluation, "default_workers", lambda: asked.append(1) or 0)
    r = evaluation.evaluate_checkpoint(path, "folder", str(tmp_path / "data"))
    assert asked == [1] and r["images"] == len(CLASSES) * len(SIZES)
    assert r["ten_crop"] is False and all(x.shape[1:] == (3, 16, 16) for x, _ in spy["batches"])


def test_a_model_of_other_classes_is_refused(tmp_path):
    """Our own file (not imported weights) must name the folder's classes, not only count them."""
    _folder(tmp_path / "data", np.random.default_rng(0))
    path, _ = _checkpoint(tmp_path, 3, class_names=[c.upper() for c in CLASSES])
    with pytest.raises(ValueError, match="trained on other classes than folder"):
        evaluation.evaluate_checkpoint(path, "folder", str(tmp_path / "data"), workers=0)


@pytest.mark.parametrize(
    "source",
    [{"format": "torchvision", "file": "w.pth", "weights": "IMAGENET1K_V2"},  # as convert records
     {"format": "timm", "file": "w.safetensors", "weights": None}, "pycls"],
)  # fmt: skip
def test_imported_weights_of_as_many_classes_take_the_folder_s_order(tmp_path, caplog, source):
    _folder(tmp_path / "data", np.random.default_rng(0))
    named = [f"class {i}" for i in range(len(CLASSES))]
    path, _ = _checkpoint(tmp_path, 3, class_names=named, source=source)
    with caplog.at_level(logging.WARNING, logger="resnext.training.evaluation"):
        r = evaluation.evaluate_checkpoint(path, "folder", str(tmp_path / "data"), workers=0)
    assert r["images"] == len(CLASSES) * len(SIZES)
    data = repr(str(tmp_path / "data"))
    (record,) = [r for r in caplog.records if r.name == "resnext.training.evaluation"]
    assert record.getMessage() == (
        f"{path} names its 6 classes otherwise than folder {data} (class 0 vs ant); "
        "taking the folders' sorted order as the model's class order"
    )
    _folder(tmp_path / "five", np.random.default_rng(0), CLASSES[:5])
    with pytest.raises(ValueError, match="other classes"):  # the count must agree
        evaluation.evaluate_checkpoint(path, "folder", str(tmp_path / "five"), workers=0)


def test_a_file_without_class_names_evaluates_any_folder(tmp_path):
    _folder(tmp_path / "data", np.random.default_rng(0))
    path, _ = _checkpoint(tmp_path, 3, class_names=None)
    r = evaluation.evaluate_checkpoint(path, "folder", str(tmp_path / "data"), workers=0)
    assert r["images"] == len(CLASSES) * len(SIZES)


def test_an_in_memory_set_of_other_channels_is_refused(tmp_path):
    """digits is decoded into memory as grey 8x8 images; a colour model cannot take them."""
    path, _ = _checkpoint(tmp_path, 3, class_names=None)
    with pytest.raises(ValueError, match=f"digits '' holds 1-channel images; {path} takes 3"):
        evaluation.evaluate_checkpoint(path, "digits")


def test_a_grey_model_evaluates_an_in_memory_grey_set(tmp_path, spy):
    """digits: the in-memory road (no files), its images checked against the model's channels."""
    path, model = _checkpoint(tmp_path, 1, 10, class_names=None)
    r = evaluation.evaluate_checkpoint(path, "digits", batch_size=128)
    x = torch.cat([b[0] for b in spy["batches"]])
    y = torch.cat([b[1] for b in spy["batches"]]).numpy()
    assert x.shape[1:] == (1, 15, 15) and r["images"] == len(y) > 100
    with torch.no_grad():
        top1, top5 = _errors(model(x).double().numpy(), y)
    assert r["top1_error"] == pytest.approx(top1) and r["top5_error"] == pytest.approx(top5)
