"""Export: ONNX (every form, both templates) against onnxruntime, TorchScript, torch.export,
safetensors, and BN fusion."""

from __future__ import annotations

import re

import onnx
import pytest
import torch

from resnext import ModelSpec, build_model, fuse_for_inference
from resnext.cli import main
from resnext.files.checkpoint import save_checkpoint

from conftest import randomize_bn

TEMPLATES = {"cifar": ((1, 1, 1), 32), "imagenet": ((1, 1, 1, 1), 64)}


def tiny(template: str, form: str) -> torch.nn.Module:
    depths, _ = TEMPLATES[template]
    return randomize_bn(build_model(ModelSpec(template, "bottleneck", depths, 2, 4, 10, form=form)))


def checkpoint(tmp_path, model, crop: int):
    pre = {"resize": crop, "crop": crop, "mean": [0.5] * 3, "std": [0.25] * 3}
    pre["interpolation"] = "bilinear"
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "preprocessing": pre}
    return str(save_checkpoint(tmp_path / "model.pt", payload))


def export(tmp_path, capsys, ckpt, fmt, out, *extra) -> float:
    code = main(["export", "--checkpoint", ckpt, "--format", fmt, "--out", str(out), *extra])
    text = capsys.readouterr().out
    assert code == 0, text
    return float(re.search(r"max abs diff to eager (\S+)", text).group(1))


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_onnx_matches_eager_with_dynamic_batch(tmp_path, capsys, template, form):
    model = tiny(template, form)
    ckpt = checkpoint(tmp_path, model, TEMPLATES[template][1])
    out = tmp_path / "model.onnx"
    diff = export(tmp_path, capsys, ckpt, "onnx", out, "--batch", "dynamic")
    assert diff <= 1e-4
    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


@pytest.mark.parametrize(
    "fmt, suffix",
    [("torchscript", ".ts"), ("exported-program", ".pt2"), ("safetensors", ".safetensors")],
)
def test_other_formats_match_eager(tmp_path, capsys, fmt, suffix):
    ckpt = checkpoint(tmp_path, tiny("cifar", "c"), 32)
    assert export(tmp_path, capsys, ckpt, fmt, tmp_path / f"model{suffix}") == 0.0


@pytest.mark.parametrize(
    "fmt, suffix", [("exported-program", ".pt2"), ("safetensors", ".safetensors")]
)
def test_export_insists_on_the_loadable_suffix(tmp_path, capsys, fmt, suffix):
    ckpt = checkpoint(tmp_path, tiny("cifar", "c"), 32)
    argv = ["export", "--checkpoint", ckpt, "--format", fmt, "--out", str(tmp_path / "m.bin")]
    assert main(argv) == 2
    assert suffix in capsys.readouterr().err


@pytest.mark.parametrize(
    "template, form", [("cifar", "a"), ("cifar", "b"), ("cifar", "c"), ("imagenet", "c")]
)
def test_fusion_folds_every_bn_and_keeps_outputs(template, form):
    model = tiny(template, form)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    x = torch.randn(3, 3, TEMPLATES[template][1], TEMPLATES[template][1])
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() <= 1e-5
