"""load_model: every kind of model file to a ready model; evaluate and predict agree; file modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from timm.models import resnet as timm_resnet

import resnext
from resnext import ModelSpec, Preprocessing, build_model, load_model, save_safetensors
from resnext.cli import main
from resnext.data.images import decode_image
from resnext.files.checkpoint import FORMAT, save_checkpoint
from resnext.files.interop import torchvision_to_pycls
from resnext.files.model_file import read_model_file, resolve
from resnext.training import evaluation

from conftest import randomize_bn, write_image_folder

CLASSES = ["cat", "dog", "ship"]
SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 3, base_planes=16)
PRE = Preprocessing(36, 32, "bicubic", (0.5, 0.45, 0.4), (0.25, 0.24, 0.26))
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny() -> resnext.ResNeXt:
    return randomize_bn(build_model(SPEC))


def logits(model: torch.nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def trainer_file(tmp: Path, model) -> Path:
    """A checkpoint as the trainer writes it: weights, spec, metadata and training state."""
    payload = {
        "model": model.state_dict(),
        "spec": model.spec.to_dict(),
        "model_name": None,
        "class_names": CLASSES,
        "preprocessing": PRE.to_dict(),
        "config": {"recipe": "tiny"},
        "epoch": 1,
        "step": 4,
        "optimizer": {"state": {}, "param_groups": []},
    }
    return save_checkpoint(tmp / "last.pt", payload)


def safetensors_file(tmp: Path, model) -> Path:
    meta = {"spec": model.spec.to_dict(), "class_names": CLASSES, "preprocessing": PRE.to_dict()}
    return save_safetensors(tmp / "model.safetensors", model.state_dict(), meta)


def bare_safetensors(tmp: Path, model) -> Path:
    return save_safetensors(tmp / "bare.safetensors", model.state_dict())


def pycls_file(tmp: Path, model) -> Path:
    state = torchvision_to_pycls(model.state_dict())
    path = tmp / "model_epoch_0100.pyth"
    torch.save({"epoch": 100, "model_state": state}, path)
    return path


KINDS = {
    "trainer .pt": (trainer_file, PRE, CLASSES),
    "safetensors + metadata": (safetensors_file, PRE, CLASSES),
    "bare safetensors": (bare_safetensors, Preprocessing(32, 32), None),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_our_files_load_with_their_preprocessing(tmp_path, kind):
    write, pre, classes = KINDS[kind]
    src = tiny()
    model = load_model(write(tmp_path, src))
    assert not model.training and model.spec == SPEC
    assert model.preprocessing == pre and model.class_names == classes
    assert torch.equal(logits(model), logits(src))


def test_pycls_file_loads_with_pycls_preprocessing_and_rgb_stem(tmp_path):
    src = tiny()
    model = load_model(pycls_file(tmp_path, src))
    assert model.preprocessing == Preprocessing(256, 224)
    # pycls trains on BGR: the imported stem takes RGB
    assert (logits(model) - logits(src, X.flip(1))).abs().max() <= 1e-5


def test_bare_torchvision_file_is_known_by_its_published_name(tmp_path):
    src = randomize_bn(torchvision.models.resnet18(weights=None))
    path = tmp_path / "resnet18-f37072fd.pth"  # IMAGENET1K_V1's file name
    torch.save(src.state_dict(), path)
    model = load_model(path)
    assert model.spec.depths == (2, 2, 2, 2) and model.spec.block == "basic"
    assert model.preprocessing == Preprocessing(256, 224, "bilinear")
    assert len(model.class_names) == 1000 and model.class_names[0] == "tench"
    x = torch.randn(1, 3, 64, 64)
    assert (logits(model, x) - logits(src, x)).abs().max() <= 1e-5
    # convert to safetensors, and the result is read by the same road
    out = tmp_path / "r18.safetensors"
    argv = ["convert", "--from", "torchvision", str(path), "--out", str(out)]
    assert main(argv) == 0
    again = load_model(out)
    assert again.preprocessing == model.preprocessing and again.class_names == model.class_names


def test_bare_timm_file_in_the_hub_cache_gets_timm_preprocessing(tmp_path):
    src = timm_resnet.ResNet(
        timm_resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, cardinality=4, base_width=4
    )
    randomize_bn(src)
    folder = tmp_path / "models--timm--resnext50_32x4d.a1h_in1k" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    torch.save(src.state_dict(), folder / "pytorch_model.bin")
    model = load_model(folder / "pytorch_model.bin")
    assert model.preprocessing == Preprocessing(235, 224, "bicubic")
    x = torch.randn(1, 3, 64, 64)
    assert (logits(model, x) - logits(src, x)).abs().max() <= 1e-5


def test_full_size_torchvision_resnext_spec_is_inferred(tmp_path):
    with torch.device("meta"):
        shapes = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    path = tmp_path / "resnext50_32x4d-1a0047aa.pth"  # IMAGENET1K_V2: resize 232
    torch.save(state, path)
    model = load_model(path)
    assert (model.spec.cardinality, model.spec.base_width) == (32, 4)
    assert model.preprocessing.resize == 232 and model.name == "resnext50_32x4d"


def test_resume_reads_the_raw_dict_and_old_preprocessing_lacks_channels(tmp_path):
    src = build_model(ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 3, in_channels=1))
    old = {"resize": 8, "crop": 8, "mean": [0.3], "std": [0.4], "interpolation": "bilinear"}
    path = save_checkpoint(
        tmp_path / "old.pt",
        {
            "model": src.state_dict(),
            "spec": src.spec.to_dict(),
            "preprocessing": old,
            "optimizer": {"x": 1},
        },  # fmt: skip
    )
    raw = read_model_file(path)
    assert raw["format"] == FORMAT and raw["optimizer"] == {"x": 1}
    assert load_model(path).preprocessing.channels == 1


def test_a_source_that_is_no_file_goes_through_resolve(tmp_path):
    with pytest.raises(ValueError, match="no such model file"):
        resolve(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="no such model file"):
        load_model(str(tmp_path / "no" / "such.pt"))


def test_preprocessing_record_round_trip_and_checks():
    assert Preprocessing.from_dict(PRE.to_dict()) == PRE
    assert json.loads(json.dumps(PRE.to_dict())) == PRE.to_dict()
    with pytest.raises(ValueError, match="unknown interpolation"):
        Preprocessing(8, 8, "lanczos")
    with pytest.raises(ValueError, match="3 channels"):
        Preprocessing(8, 8, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="smaller than crop"):
        Preprocessing(8, 16)
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**PRE.to_dict(), "colour": "yes"})
    assert PRE.with_view(crop=48) == Preprocessing(48, 48, PRE.interpolation, PRE.mean, PRE.std)


@pytest.mark.parametrize("size", [40, 72])  # in memory (batch path) and per-image workers
def test_evaluate_and_predict_see_the_same_pixels(tmp_path, monkeypatch, capsys, size):
    ckpt = trainer_file(tmp_path, tiny())
    data = write_image_folder(tmp_path / "images", CLASSES, per_class=3, size=size, suffix=".png")
    seen = []

    def capture(model, batches, *args, **kwargs):
        for x, _ in batches:
            seen.append(x)
            seen_pred.append(model(x).argmax(1))
        return {"top1_error": 0.0, "top5_error": 0.0, "loss": 0.0, "images": 0}

    seen_pred: list[torch.Tensor] = []
    monkeypatch.setattr(evaluation, "evaluate", capture)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "folder",
                 "--data", str(data), "--workers", "0"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "val"), "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model = load_model(ckpt)
    want = torch.stack([PRE.transform()(decode_image(r["path"], 3)) for r in results])
    assert torch.equal(torch.cat(seen), want)  # both in sorted class-folder order
    assert torch.cat(seen_pred).tolist() == [r["top"][0]["index"] for r in results]
    assert model.preprocessing.interpolation == "bicubic"


def test_evaluate_reads_a_bare_state_dict(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": tiny().state_dict()}, path)
    data = write_image_folder(tmp_path / "images", CLASSES, per_class=2)
    argv = ["evaluate", "--checkpoint", str(path), "--dataset", "folder", "--data", str(data)]
    assert main([*argv, "--json", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6


def test_grey_model_predicts_a_colour_image(tmp_path, capsys):
    from PIL import Image

    spec = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 3, in_channels=1, base_planes=16)
    pre = Preprocessing(8, 8, "bilinear", (0.305,), (0.376,), channels=1)
    payload = {"model": build_model(spec).state_dict(), "spec": spec.to_dict()}
    ckpt = save_checkpoint(tmp_path / "best.pt", payload | {"preprocessing": pre.to_dict()})
    Image.new("RGB", (20, 12), (200, 30, 90)).save(tmp_path / "photo.jpg")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "photo.jpg")]) == 0
    assert "photo.jpg: " in capsys.readouterr().out


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_model_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        pt = save_checkpoint(tmp_path / "last.pt", {"model": tiny().state_dict()})
        st = save_safetensors(tmp_path / "m.safetensors", tiny().state_dict())
    finally:
        os.umask(old)
    assert (pt.stat().st_mode & 0o777) == 0o666 & ~mask
    assert (st.stat().st_mode & 0o777) == 0o666 & ~mask


@pytest.mark.parametrize("size", [32, 80])  # decoded in memory up to 64 px, else file by file
def test_grey_model_evaluates_a_colour_folder_as_predict_reads_it(tmp_path, size):
    model = randomize_bn(build_model(ModelSpec(**{**SPEC.to_dict(), "in_channels": 1})))
    pre = Preprocessing(32, 32, "bilinear", (0.5,), (0.25,), 1)
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "class_names": CLASSES,
               "preprocessing": pre.to_dict()}  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "grey.pt", payload)
    root = write_image_folder(tmp_path / "data", CLASSES, per_class=3, splits=["val"], size=size)
    r = evaluation.evaluate_checkpoint(ckpt, "folder", str(root), batch_size=4, workers=0)
    paths = sorted((root / "val").glob("*/*.jpg"))
    results = list(resnext.inference.predict.predict_file(ckpt, paths, top_k=1))
    wrong = sum(res["top"][0]["class"] != Path(res["path"]).parent.name for res in results)
    assert r["images"] == len(paths) == 9
    assert r["top1_error"] == pytest.approx(100 * wrong / 9)
