"""Weights in: imports with equal logits, wrappers, strict report, safe loading, safetensors, pycls."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
import torchvision
from timm.models import resnet as timm_resnet
from torchvision.models import resnet as tv_resnet

from resnext import ModelSpec, build_model
from resnext.cli import main
from resnext.files.checkpoint import CheckpointError
from resnext.files.convert import import_weights
from resnext.files.interop import (
    infer_spec,
    pycls_to_torchvision,
    registered_name,
    timm_preprocessing,
    torchvision_preprocessing,
    torchvision_to_pycls,
)
from resnext.files.loader import load_model
from resnext.files.model_file import read_model_file, save_safetensors
from resnext.files.weights import WeightsError, load_weights, unwrap_state_dict
from resnext.models.zoo import get_spec

from conftest import randomize_bn

SPEC = ModelSpec("imagenet", "bottleneck", (1, 1, 1, 1), 4, 4, 10)


def tiny_torchvision() -> torch.nn.Module:
    """A ResNeXt-14 (4x4d) built by torchvision's own classes."""
    model = tv_resnet.ResNet(
        tv_resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=4
    )
    return randomize_bn(model)


def tiny_timm() -> torch.nn.Module:
    model = timm_resnet.ResNet(
        timm_resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, cardinality=4, base_width=4
    )
    return randomize_bn(model)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_torchvision_import_infers_the_spec_and_gives_equal_logits(tmp_path):
    src = tiny_torchvision()
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    payload = import_weights("torchvision", path)
    assert payload["spec"] == SPEC.to_dict()
    model = build_model(SPEC)
    load_weights(model, payload["model"])
    assert (logits(model, X) - logits(src, X)).abs().max() <= 1e-5


@pytest.mark.parametrize("form", ["a", "b"])
def test_torchvision_weights_load_into_every_form(form):
    src = tiny_torchvision()
    model = build_model(ModelSpec(**{**SPEC.to_dict(), "depths": SPEC.depths, "form": form}))
    assert load_weights(model, src.state_dict()).ok
    assert (logits(model, X) - logits(src, X)).abs().max() <= 1e-5


def test_timm_import_from_ema_wrapper_gives_equal_logits(tmp_path):
    src = tiny_timm()
    path = tmp_path / "timm.pth.tar"
    other = {k: torch.zeros_like(v) for k, v in src.state_dict().items()}
    torch.save({"state_dict": other, "state_dict_ema": src.state_dict(), "epoch": 3}, path)
    model = build_model(SPEC)
    load_weights(model, path, key="state_dict_ema")
    assert (logits(model, X) - logits(src, X)).abs().max() <= 1e-5


def test_full_size_torchvision_resnext50_is_recognised():
    with torch.device("meta"):
        state = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    spec = infer_spec(state)
    assert registered_name(spec) == "resnext50_32x4d"
    assert (spec.cardinality, spec.base_width, spec.num_classes) == (32, 4, 1000)


def test_a_narrower_stem_is_not_named_as_its_full_width_sibling():
    """Same C, d and depths at 16 base planes: another network, not resnext50_32x4d."""
    narrow = dataclasses.replace(get_spec("resnext50_32x4d"), base_planes=16)
    assert registered_name(narrow) is None
    assert registered_name(get_spec("resnext11_1x64d_p16")) is None  # parsed, not registered


def test_pycls_key_layout_and_round_trip():
    with torch.device("meta"):
        state = build_model(ModelSpec(depths=(3, 4, 6, 3), cardinality=32, base_width=4))
    state = state.state_dict()
    pycls = torchvision_to_pycls(state)
    # pycls/models/resnet.py: ResStemIN, ResStage "b{i+1}", ResBlock proj/bn/f, ResHead.fc.
    for key in [
        "stem.conv.weight",
        "stem.bn.running_var",
        "s1.b1.proj.weight",
        "s1.b1.bn.weight",
        "s1.b1.f.a.weight",
        "s1.b1.f.a_bn.bias",
        "s2.b4.f.b.weight",
        "s4.b3.f.c_bn.running_mean",
        "head.fc.weight",
        "head.fc.bias",
    ]:
        assert key in pycls, key
    assert pycls_to_torchvision(pycls).keys() == state.keys()
    assert torchvision_to_pycls(pycls_to_torchvision(pycls)).keys() == pycls.keys()
    with pytest.raises(ValueError, match="no mapping"):
        pycls_to_torchvision({"s1.b1.f.se.f_ex.0.weight": torch.zeros(1)})


def test_pycls_import_gives_equal_logits_on_rgb_input(tmp_path):
    src = tiny_torchvision()  # stands in for a pycls network: same function, pycls's names
    path = tmp_path / "model_epoch_0100.pyth"
    torch.save({"epoch": 100, "model_state": torchvision_to_pycls(src.state_dict())}, path)
    payload = import_weights("pycls", path)
    model = build_model(SPEC)
    load_weights(model, payload["model"])
    # pycls trains on BGR images; the imported stem takes RGB.
    assert (logits(model, X) - logits(src, X.flip(1))).abs().max() <= 1e-5
    assert payload["preprocessing"]["crop"] == 224


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"model": s},
        lambda s: {"state_dict": s, "epoch": 1},
        lambda s: {"model_ema": s},
        lambda s: {"model": {"module." + k: v for k, v in s.items()}},
        lambda s: {"_orig_mod." + k: v for k, v in s.items()},
    ],
)
def test_unwraps_the_usual_containers(wrap):
    state = build_model(SPEC).state_dict()
    got = unwrap_state_dict(wrap(state))
    assert got.keys() == state.keys()


def test_strict_report_names_missing_unexpected_and_mismatched_keys():
    state = dict(build_model(SPEC).state_dict())
    del state["layer1.0.bn1.weight"]
    state["head.bogus"] = torch.zeros(3)
    model = build_model(ModelSpec(**{**SPEC.to_dict(), "depths": SPEC.depths, "num_classes": 7}))
    with pytest.raises(WeightsError) as e:
        load_weights(model, state)
    msg = str(e.value)
    assert "1 missing (layer1.0.bn1.weight)" in msg
    assert "1 unexpected (head.bogus)" in msg
    assert "fc.weight: file [10, 2048] vs model [7, 2048]" in msg
    before = model.fc.weight.clone()
    report = load_weights(model, state, strict=False)
    assert not report.ok and torch.equal(model.fc.weight, before)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


class Planted:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": Planted(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refusing to load .*could run code"):
        load_weights(build_model(SPEC), path)
    assert not marker.exists()
    assert main(["predict", "--checkpoint", str(path), str(tmp_path)]) == 2
    assert not marker.exists()
    if writer == "torch":  # the plant is real: an unsafe load would have run it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_safetensors_round_trip_with_metadata(tmp_path):
    model = randomize_bn(build_model(SPEC))
    meta = {"spec": SPEC.to_dict(), "class_names": [str(i) for i in range(10)]}
    path = save_safetensors(tmp_path / "m.safetensors", model.state_dict(), meta)
    ckpt = read_model_file(path)
    assert ckpt["class_names"] == meta["class_names"]
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    twin = load_model(path)
    assert torch.equal(logits(twin, X), logits(model, X))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_gives_a_one_line_error(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    state = build_model(SPEC).state_dict()
    if suffix == ".pt":
        torch.save({"model": state}, path)
    else:
        save_safetensors(path, state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_weights(build_model(SPEC), path)
    assert "\n" not in str(e.value)


def test_source_documented_preprocessing():
    v1 = torchvision_preprocessing("resnext50_32x4d", "resnext50_32x4d-7cdf4587.pth")
    v2 = torchvision_preprocessing("resnext50_32x4d", "resnext50_32x4d-1a0047aa.pth")
    assert (v1["preprocessing"]["resize"], v2["preprocessing"]["resize"]) == (256, 232)
    assert len(v1["class_names"]) == 1000
    t = timm_preprocessing("resnext50_32x4d.a1h_in1k")["preprocessing"]
    assert (t["resize"], t["crop"], t["interpolation"]) == (235, 224, "bicubic")


def test_convert_command_writes_a_self_describing_checkpoint(tmp_path, capsys):
    src = tiny_timm()
    path = tmp_path / "timm.pth"
    torch.save(src.state_dict(), path)
    out = tmp_path / "out.safetensors"
    argv = ["convert", "--from", "timm", str(path), "--out", str(out), "--form", "b"]
    argv += ["--source-name", "resnext50_32x4d.a1h_in1k"]
    assert main(argv) == 0
    assert "bicubic" in capsys.readouterr().out
    model = load_model(out)
    assert model.spec.form == "b" and model.preprocessing.resize == 235
    assert (logits(model, X) - logits(src, X)).abs().max() <= 1e-5
    assert main(["convert", "--from", "pycls", str(path), "--out", str(out)]) == 2
    assert "no mapping" in capsys.readouterr().err


def test_mismatched_import_fails_in_one_line(tmp_path, capsys):
    path = tmp_path / "tv.pth"
    torch.save(tiny_torchvision().state_dict(), path)
    argv = ["convert", "--from", "torchvision", str(path), "--model", "resnext50_32x4d"]
    assert main([*argv, "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnext: error:") and "shape mismatch" in err and err.count("\n") == 1


def test_convert_names_a_timm_tag_without_weights_and_says_when_nothing_is_recorded(
    tmp_path, capsys
):
    path = tmp_path / "timm.pth"
    torch.save(tiny_timm().state_dict(), path)
    argv = ["convert", "--from", "timm", str(path), "--out", str(tmp_path / "out.pt")]
    assert main([*argv, "--source-name", "resnext50_32x4d.nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnext50_32x4d.nope" in err
    assert main([*argv, "--source-name", "no_such_timm_model"]) == 0
    out = capsys.readouterr().out
    assert "no preprocessing recorded" in out and "None" not in out


def test_a_missing_key_lists_at_most_ten_of_the_files_keys():
    obj = {f"entry{i:02d}": {"w": torch.zeros(1)} for i in range(30)}
    with pytest.raises(WeightsError) as e:
        unwrap_state_dict(obj, key="model")
    assert "entry09" in str(e.value) and "entry10" not in str(e.value)
    assert "20 more" in str(e.value)


def test_convert_checks_a_parsed_architecture_against_model(tmp_path, capsys):
    """A 16-plane trainer file converts under its own (parsed) name and no other."""
    from resnext.files.model_file import save_model_file

    spec = get_spec("resnext11_2x40d_p16", num_classes=10)
    path = save_model_file(tmp_path / "m.pt", {"spec": spec.to_dict(),
                                               "model": build_model(spec).state_dict()})  # fmt: skip
    argv = ["convert", "--from", "resnext", str(path), "--out", str(tmp_path / "o.pt")]
    assert main([*argv, "--model", "resnext11_2x40d_p16"]) == 0
    assert main([*argv, "--model", "resnext11_2x40d"]) == 2
    err = capsys.readouterr().err
    assert "holds a resnext11_2x40d_p16 model, not resnext11_2x40d" in err
