"""Forms (a), (b), (c) of Figure 3 compute the same function (section 3.3)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from resnext import build_model, convert_form, create_model
from resnext.models.forms import convert_state_dict

from conftest import tiny_spec

SPECS = {
    "cifar_c4": tiny_spec(depths=(2, 1, 1)),
    # 32 planes: two channels per path (float64 convs are slow); the cifar specs keep four.
    "imagenet_c8_stride1x1_shortcutC": tiny_spec(
        template="imagenet",
        depths=(1, 1, 2, 1),
        cardinality=8,
        stride_in_1x1=True,
        shortcut="C",
        base_planes=32,
    ),
    "cifar_c3_shortcutA_zero_init": tiny_spec(cardinality=3, shortcut="A", zero_init_residual=True),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("key", SPECS)
def test_forms_are_equal_in_float64(key: str, mode: str) -> None:
    base = build_model(SPECS[key]).double()
    for p in base.parameters():  # move BN away from its identity init so BN is exercised
        p.data.add_(0.1 * torch.randn_like(p))
    for name, buf in base.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buf.normal_()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    outputs = {}
    for form in "abc":
        model = convert_form(base, form)
        assert model.spec.form == form
        getattr(model, mode)()
        outputs[form] = model(x)
    for form in "ab":
        assert (outputs[form] - outputs["c"]).abs().max().item() <= 1e-10, form


def test_conversion_round_trips_and_loads_strictly() -> None:
    model = build_model(tiny_spec())
    state = model.state_dict()
    for form in "ab":
        branched = convert_state_dict(state, 4, form)
        build_model(tiny_spec(form=form)).load_state_dict(branched, strict=True)
        back = convert_state_dict(branched, 4, "c")
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)


def test_form_layouts() -> None:
    with torch.device("meta"):  # the real widths; only the module layout is looked at
        a = create_model("resnext50_32x4d", form="a")
        b = create_model("resnext50_32x4d", form="b")
    assert len(a.layer1[0].branches) == 32 and a.layer1[0].branches[0].conv3.in_channels == 4
    assert b.layer1[0].branches[0].conv3 is None and b.layer1[0].conv3.in_channels == 128
    assert "layer1.0.branches.31.conv2.weight" in a.state_dict()


def test_conversion_does_not_share_storage() -> None:
    model = build_model(tiny_spec())
    converted = convert_form(model, "c").train()
    converted(torch.randn(2, 3, 8, 8))  # updates BN running stats of the copy only
    assert not torch.equal(converted.bn1.running_mean, model.bn1.running_mean)


def test_basic_block_models_have_one_form() -> None:
    with pytest.raises(ValueError, match="basic"):
        convert_form(create_model("resnet18"), "a")


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_every_form_draws_he_init_with_the_grouped_layers_fan_out(form: str) -> None:
    """Each conv weight ~ N(0, 2 / fan_out) where fan_out is that of form (c)'s layer the
    weight belongs to (k * k * out_channels of the whole grouped layer, fb.resnet.torch), so the
    three forms start from the same distribution; checked with a KS test per layer."""
    from scipy import stats

    spec = tiny_spec(template="imagenet", depths=(1, 1, 1, 1), cardinality=8, base_planes=32)
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(spec, form=form))
    reference = dict(build_model(spec).named_modules())  # form (c): the layer each slice is of
    convs = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        # branches.i.convK of forms (a)/(b) are slices of convK of form (c)
        layer = reference[re.sub(r"\.branches\.\d+", "", name)]
        fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
        w = module.weight.detach().double().flatten().numpy() / (2.0 / fan_out) ** 0.5
        if w.size >= 200:  # enough draws for the test to have power
            assert stats.kstest(w, "norm").pvalue > 1e-4, (name, fan_out)
            convs += 1
    assert convs >= 10
