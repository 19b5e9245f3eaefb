"""Every registered model: shapes, gradients, scripting; and the options of the template."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from resnext import ResNeXt, build_model, create_model, get_spec, list_models
from resnext.models.blocks import BlockConfig, Bottleneck

from conftest import tiny_spec


def narrow(name: str, planes: int = 16, **overrides) -> ResNeXt:
    """The named architecture (depths, C, d, template, form, strides, groups, state_dict names)
    at `planes` first-stage planes instead of 64: the same network, cheap to run on a CPU."""
    return build_model(replace(get_spec(name, **overrides), base_planes=planes))


def full_width(name: str, **overrides) -> ResNeXt:
    """The named model at its real width, on the meta device: shapes only, no memory or init."""
    with torch.device("meta"):
        return create_model(name, **overrides)


@pytest.mark.parametrize("name", list_models())
def test_registered_model_forward_backward(name: str) -> None:
    model = narrow(name, num_classes=7)
    # The narrow copy is the registered network but for the widths: same keys, same groups.
    real = full_width(name, num_classes=7).state_dict()
    assert list(model.state_dict()) == list(real)
    assert [m.groups for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [
        m.groups for m in full_width(name).modules() if isinstance(m, torch.nn.Conv2d)
    ]
    # Small inputs: the ImageNet template reaches 1x1 at conv5 (BN still sees 2 values).
    size = 32 if model.spec.template == "imagenet" else 8
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"parameters without gradient: {missing[:5]}"


# Scripting compiles each module class once, whatever the depth or width: one shallow model per
# template, block, form and shortcut option covers every class the registry builds.
SCRIPTED = [
    ("resnet18", {}),  # imagenet, basic block
    ("resnet50", {}),  # bottleneck, C = 1
    ("resnext50_32x4d", {}),  # grouped, form c
    ("resnext50_2x40d", {"form": "a"}),  # forms a and b: a module per path, so C = 2
    ("resnext50_2x40d", {"form": "b"}),
    ("resnext29_8x64d", {}),  # cifar template
    ("resnext29_1x64d", {"shortcut": "A", "stride_in_1x1": True}),
    ("resnet18", {"shortcut": "C", "residual": False}),
]


@pytest.mark.parametrize(("name", "options"), SCRIPTED)
def test_each_kind_of_model_scripts_with_equal_outputs(name: str, options: dict) -> None:
    spec = get_spec(name, num_classes=7, **options)
    model = build_model(replace(spec, base_planes=16, depths=(1,) * len(spec.depths))).eval()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # skip the profiling runs
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)


def test_every_registered_model_is_built_from_the_scripted_kinds() -> None:
    """No registered model uses a template, block or form that SCRIPTED leaves out."""
    kinds = {(s.template, s.block, s.cardinality > 1) for s in map(get_spec, list_models())}
    scripted = {(s.template, s.block, s.cardinality > 1)
                for s in (get_spec(n) for n, _ in SCRIPTED)}  # fmt: skip
    assert kinds <= scripted


def test_torch_export_of_grouped_model() -> None:
    model = build_model(tiny_spec()).eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_any_input_size() -> None:
    model = narrow("resnext50_32x4d", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 75)).shape == (1, 5)


def test_interface() -> None:
    assert full_width("resnext50_32x4d").num_features == 2048
    model = narrow("resnext50_32x4d").eval()  # 16 planes: 8 * 4 * 16 = 512 features
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 512, 2, 2) and model.num_features == 512
        assert model.forward_head(feats, pre_logits=True).shape == (1, 512)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        stages = model.forward_stages(x)
    assert list(stages) == ["conv2", "conv3", "conv4", "conv5"]
    for info, (name, fmap) in zip(model.feature_info, stages.items()):
        assert fmap.shape[1] == info["num_chs"], name
        assert fmap.shape[-1] == 64 // info["reduction"], name
    model.reset_classifier(3)
    assert model(x).shape == (1, 3)
    model.reset_classifier(0)
    assert model(x).shape == (1, 512)


def test_cifar_template() -> None:
    model = full_width("resnext29_8x64d")
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    assert model.num_features == 1024 and model.fc.out_features == 10
    assert model.layer2[0].conv2.groups == 8 and model.layer2[0].conv2.in_channels == 1024
    with torch.no_grad():
        stages = narrow("resnext29_8x64d").eval().forward_stages(torch.randn(1, 3, 32, 32))
    assert [s.shape[-1] for s in stages.values()] == [32, 16, 8]  # maps of Appendix A


def test_widths_follow_the_two_rules() -> None:
    """Width int(planes * d / 64) * C; every downsampling doubles it (section 3.1)."""
    model = full_width("resnext101_32x8d")
    widths = [getattr(model, f"layer{i}")[0].conv2.out_channels for i in range(1, 5)]
    assert widths == [256, 512, 1024, 2048]
    assert all(b.conv2.groups == 32 for b in model.layer3)


def test_stride_placement() -> None:
    default = build_model(tiny_spec())
    assert default.layer2[0].conv2.stride == (2, 2) and default.layer2[0].conv1.stride == (1, 1)
    in_1x1 = build_model(tiny_spec(stride_in_1x1=True))
    assert in_1x1.layer2[0].conv1.stride == (2, 2) and in_1x1.layer2[0].conv2.stride == (1, 1)


def _num_projections(model: ResNeXt) -> int:
    return sum(1 for n, _ in model.named_modules() if n.endswith("downsample.0"))


def test_shortcut_types() -> None:
    spec = dict(depths=(2, 2, 2))
    assert _num_projections(build_model(tiny_spec(shortcut="A", **spec))) == 0
    assert (
        _num_projections(build_model(tiny_spec(shortcut="B", **spec))) == 3
    )  # first of each stage
    assert _num_projections(build_model(tiny_spec(shortcut="C", **spec))) == 6  # every block
    model = build_model(tiny_spec(shortcut="A", **spec)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_zero_init_residual_makes_blocks_start_as_identity() -> None:
    model = build_model(tiny_spec(depths=(2, 1, 1), zero_init_residual=True)).eval()
    block = model.layer1[1]
    assert not block.bn3.weight.any()
    x = torch.rand(1, 256, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_no_residual_ablation() -> None:
    plain = build_model(tiny_spec(residual=False))
    assert _num_projections(plain) == 0
    block = plain.layer1[0].eval()
    with torch.no_grad():
        x = torch.randn(1, 64, 8, 8)
        torch.testing.assert_close(block(x), torch.relu(block.transform(x)))


def test_in_channels_option() -> None:
    model = build_model(tiny_spec(in_channels=1)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_init_follows_he_fan_out() -> None:
    model = narrow("resnext50_32x4d", planes=32)
    w = model.layer3[0].conv2.weight  # [256, 8, 3, 3], grouped: fan-out 9 * 256 (fan-in 9 * 8)
    assert w.shape == (256, 8, 3, 3)
    assert abs(w.std().item() / (2 / (9 * 256)) ** 0.5 - 1) < 0.05
    assert (model.layer1[0].bn3.weight == 1).all() and (model.bn1.bias == 0).all()


def test_narrow_network_keeps_the_shape() -> None:
    model = build_model(tiny_spec(base_planes=16)).eval()
    assert model.conv1.out_channels == 16 and model.num_features == 256
    assert [f["num_chs"] for f in model.feature_info] == [64, 128, 256]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("stride", [1, 2])
def test_shortcut_a_is_the_subsampled_identity_padded_with_zeros(stride: int) -> None:
    """Option A (He et al. 2016): the input, taken every `stride` pixels from the first, in the
    first channels; zeros in the new ones. The block adds it to its transform."""
    cfg = BlockConfig(cardinality=2, base_width=4, shortcut="A")
    block = Bottleneck(24, 16, stride, cfg).eval()  # 24 channels in, 64 out
    x = torch.randn(2, 24, 7, 9)
    with torch.no_grad():
        short = block.downsample(x)
        want = np.zeros((2, 64, *short.shape[2:]), np.float32)
        want[:, :24] = x.numpy()[:, :, ::stride, ::stride]
        np.testing.assert_array_equal(short.numpy(), want)
        torch.testing.assert_close(
            block(x), torch.relu(block.transform(x) + torch.from_numpy(want))
        )


def test_the_models_package_builds_architectures_only():
    """Weights are the files package's: `resnext.create_model(name, weights=...)`."""
    from resnext.models.model import create_model as architecture_only

    with pytest.raises(TypeError, match=r"resnext\.create_model"):
        architecture_only("resnet18", weights="torchvision")
