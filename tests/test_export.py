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


# Each form's ops on one template, the other template's stem (7x7/2, max pool) once.
@pytest.mark.parametrize(
    "template, form", [("cifar", "a"), ("cifar", "b"), ("cifar", "c"), ("imagenet", "c")]
)
def test_onnx_matches_eager_with_dynamic_batch(tmp_path, capsys, template, form):
    model = tiny(template, form)
    ckpt = checkpoint(tmp_path, model, TEMPLATES[template][1])
    out = tmp_path / "model.onnx"
    diff = export(tmp_path, capsys, ckpt, "onnx", out, "--batch", "dynamic")
    assert diff <= 1e-4
    graph = onnx.load(str(out))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18]  # README
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    # Not only the exporter's own word: onnxruntime, run here, on another batch size.
    import onnxruntime

    size = TEMPLATES[template][1]
    x = torch.randn(3, 3, size, size)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert (torch.from_numpy(got) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "fmt, suffix",
    [("torchscript", ".ts"), ("exported-program", ".pt2"), ("safetensors", ".safetensors")],
)
def test_other_formats_match_eager(tmp_path, capsys, fmt, suffix):
    """The exporter's check, then the file reloaded here by its format's own reader."""
    model = tiny("cifar", "c")
    ckpt = checkpoint(tmp_path, model, 32)
    out = tmp_path / f"model{suffix}"
    assert export(tmp_path, capsys, ckpt, fmt, out) == 0.0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        if fmt == "torchscript":
            assert torch.equal(torch.jit.load(str(out)).eval()(x), want)
        elif fmt == "exported-program":
            assert torch.equal(torch.export.load(str(out)).module()(x), want)
        else:
            from safetensors.torch import load_file

            tensors, state = load_file(str(out)), model.state_dict()
            assert set(tensors) == set(state)
            assert all(torch.equal(tensors[k], v) for k, v in state.items())
            twin = build_model(model.spec)
            twin.load_state_dict(tensors, strict=True)
            assert torch.equal(twin.eval()(x), want)


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


def test_onnx_and_program_take_other_image_sizes_and_onnx_carries_metadata(tmp_path, capsys):
    import json

    from resnext import load_model

    model = tiny("cifar", "c")
    pre = {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    pre |= {"interpolation": "bicubic", "channels": 3}
    classes = [f"class{i}" for i in range(10)]
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "preprocessing": pre}
    ckpt = str(save_checkpoint(tmp_path / "model.pt", payload | {"class_names": classes}))
    onnx_file, program = tmp_path / "m.onnx", tmp_path / "m.pt2"
    assert export(tmp_path, capsys, ckpt, "onnx", onnx_file) <= 1e-4
    assert export(tmp_path, capsys, ckpt, "exported-program", program) <= 1e-4
    x = torch.randn(2, 3, 64, 48)  # exported at 32 x 32
    with torch.no_grad():
        want = model(x)
    assert (load_model(onnx_file)(x) - want).abs().max() <= 1e-4
    assert (load_model(program, trusted=True)(x) - want).abs().max() <= 1e-4
    dims = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3])) and dims[1].dim_value == 3
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["class_names"] == classes and props["preprocessing"] == pre
    assert props["spec"] == model.spec.to_dict()


def test_static_spatial_export_fixes_the_size(tmp_path, capsys):
    from resnext import load_model

    ckpt = checkpoint(tmp_path, tiny("cifar", "c"), 32)
    out = tmp_path / "m.onnx"
    export(tmp_path, capsys, ckpt, "onnx", out, "--spatial", "static")
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert (dims[2].dim_value, dims[3].dim_value) == (32, 32)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        load_model(out)(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".ts"), ("exported-program", ".pt2")])
def test_torch_archives_carry_the_metadata(tmp_path, capsys, fmt, suffix):
    import json

    ckpt = checkpoint(tmp_path, tiny("cifar", "c"), 32)
    out = tmp_path / f"m{suffix}"
    export(tmp_path, capsys, ckpt, fmt, out)
    extra = {"resnext.json": ""}
    if fmt == "torchscript":
        torch.jit.load(str(out), _extra_files=extra)
    else:
        torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["resnext.json"])
    assert meta["preprocessing"]["crop"] == 32 and meta["spec"]["cardinality"] == 2


def digits_checkpoint(tmp_path) -> str:
    """The digits recipe's model: 8x8 grey input, crop 8."""
    from resnext import create_model

    model = randomize_bn(create_model("resnext11_4x16d", in_channels=1))
    pre = {"resize": 8, "crop": 8, "mean": [0.5], "std": [0.25], "interpolation": "bilinear"}
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "preprocessing": pre}
    return str(save_checkpoint(tmp_path / "digits.pt", payload))


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("exported-program", ".pt2")])
def test_small_grey_models_export_with_dynamic_height_and_width(tmp_path, capsys, fmt, suffix):
    out = tmp_path / f"digits{suffix}"
    assert export(tmp_path, capsys, digits_checkpoint(tmp_path), fmt, out) <= 1e-4
    if fmt == "exported-program":  # runs at its own crop, not only at some larger minimum
        assert torch.export.load(str(out)).module()(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "fmt, name", [("onnx", "m.pt"), ("torchscript", "m.onnx"), ("exported-program", "m.pt")]
)
def test_export_refuses_a_suffix_of_another_format_before_writing(tmp_path, capsys, fmt, name):
    ckpt = checkpoint(tmp_path, tiny("cifar", "c"), 32)
    argv = ["export", "--checkpoint", ckpt, "--format", fmt, "--out", str(tmp_path / name)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnext: error:" in err
    assert not (tmp_path / name).exists()


def test_negative_tolerance_is_refused_before_writing(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, tiny("cifar", "c"), 32)
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(out)]
    assert main([*argv, "--tolerance", "-1"]) == 2
    assert "--tolerance" in capsys.readouterr().err and not out.exists()


def test_a_safetensors_export_without_a_spec_is_checked_against_the_file(tmp_path, monkeypatch):
    """The check reads the written weights back (into a network of the model's spec): a file
    that differs from the model shows a difference, even with no metadata to rebuild from."""
    import resnext.files.export as export
    from resnext.files.model_file import save_safetensors

    def save_damaged(path, state, metadata):
        state = dict(state, **{"fc.bias": state["fc.bias"] + 0.5})
        return save_safetensors(path, state, metadata)

    model = tiny("cifar", "c")
    assert export.export_model(model, "safetensors", tmp_path / "a.safetensors", 32) == 0.0
    monkeypatch.setattr(export, "save_safetensors", save_damaged)
    diff = export.export_model(model, "safetensors", tmp_path / "b.safetensors", 32)
    assert diff == pytest.approx(0.5)
