"""Complexity counted from the model, pinned to golden values and to the paper's tables."""

from __future__ import annotations

import pytest
import torch

from resnext import count_complexity, create_model, design_width
from resnext.models.design import block_macs


def _meta_count(name: str, size: int = 224, **kw):
    with torch.device("meta"):
        model = create_model(name, **kw)
    return count_complexity(model, (3, size, size))


@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("resnet50", 25_557_032, 4_089_185_256),
        ("resnext50_32x4d", 25_028_904, 4_230_480_872),
        ("resnet101", 44_549_160, 7_801_406_440),
        ("resnext101_32x4d", 44_177_704, 7_969_997_800),
        ("resnext101_32x8d", 88_791_336, 16_414_016_488),
        ("resnext101_64x4d", 83_455_272, 15_460_271_080),
    ],
)
def test_golden_complexity(name: str, params: int, macs: int | None) -> None:
    c = _meta_count(name)
    assert c.params == params
    if macs is not None:
        assert c.macs == macs


def test_macs_include_fc_bias_and_match_flop_counter_otherwise() -> None:
    """Our count = PyTorch's FlopCounterMode / 2 + the 1,000 fc bias additions."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("resnet18").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert count_complexity(model, (3, 64, 64)).macs == counter.get_total_flops() // 2 + 1000


@pytest.mark.parametrize(
    "name, params_m, gmacs",
    [("resnet50", 25.5, 4.1), ("resnext50_32x4d", 25.0, 4.2), ("resnet101", None, 7.8),
     ("resnext101_32x4d", None, 8.0), ("resnet200", None, 15.0)],
)  # fmt: skip
def test_paper_table1_and_table4_rounded(name: str, params_m: float | None, gmacs: float) -> None:
    c = _meta_count(name)
    if params_m is not None:  # Table 1 gives params; Table 4 only FLOPs
        assert abs(c.params / 1e6 - params_m) < 0.1
    assert abs(c.macs / 1e9 - gmacs) < 0.05


@pytest.mark.parametrize("name, params_m", [("resnext29_8x64d", 34.4), ("resnext29_16x64d", 68.1)])
def test_paper_table7_cifar_params(name: str, params_m: float) -> None:
    # The paper rounds 68,155,210 to 68.1M (truncation); allow 0.1M.
    assert abs(_meta_count(name, 32).params / 1e6 - params_m) <= 0.1


def test_table3_grid_preserves_complexity() -> None:
    """Table 3: every ResNeXt-50 of the grid costs ~4.1G MACs, within 5% of ResNet-50."""
    base = _meta_count("resnet50").macs
    for name in ("resnext50_2x40d", "resnext50_4x24d", "resnext50_8x14d", "resnext50_32x4d"):
        assert abs(_meta_count(name).macs / base - 1) < 0.05


def test_breakdown_sums_to_totals_and_names_stages() -> None:
    c = _meta_count("resnext50_32x4d")
    assert list(c.stages) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc"]
    for key in ("params", "macs", "activations"):
        assert sum(s[key] for s in c.stages.values()) == getattr(c, key)


def _bottleneck_macs(size: int, cin: int, planes: int, cardinality: int, d: int, stride: int):
    """Closed form of one block's MACs (paper Fig. 3c): 1x1 in, grouped 3x3 (stride), 1x1 out,
    and the 1x1 projection where the shape changes; `size` is the input map's side."""
    width, out, s = int(planes * d / 64) * cardinality, planes * 4, size // stride
    macs = size * size * cin * width + s * s * width * (width // cardinality) * 9
    macs += s * s * width * out
    return macs + (s * s * cin * out if stride > 1 or cin != out else 0)


@pytest.mark.parametrize(
    ("name", "cardinality", "d"), [("resnext50_32x4d", 32, 4), ("resnet50", 1, 64)]
)
def test_rule_2_every_block_after_a_stage_s_first_costs_the_same(name, cardinality, d) -> None:
    """Rule 2 of section 3.1: halving the map doubles the width, so the blocks of every stage
    cost the same (but for each stage's first, which also projects); each stage's count is
    the closed form's."""
    c = _meta_count(name)
    size, cin, same = 56, 64, set()
    for stage, (planes, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=2
    ):
        first = _bottleneck_macs(size, cin, planes, cardinality, d, stride)
        size, cin = size // stride, planes * 4
        rest = _bottleneck_macs(size, cin, planes, cardinality, d, 1)
        same.add(rest)
        assert c.stages[f"conv{stage}"]["macs"] == first + (blocks - 1) * rest, stage
    assert len(same) == 1


def test_forms_have_equal_complexity() -> None:
    counts = {f: _meta_count("resnext50_32x4d", 64, form=f) for f in "abc"}
    assert counts["a"].params == counts["b"].params == counts["c"].params
    assert counts["a"].macs == counts["b"].macs == counts["c"].macs


def test_count_on_real_weights_restores_training_mode() -> None:
    model = create_model("resnet18").train()
    c = count_complexity(model, (3, 32, 32))
    assert model.training and c.macs > 0 and c.activations > 0


@pytest.mark.parametrize("cardinality, d", [(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)])
def test_design_reproduces_table2(cardinality: int, d: int) -> None:
    assert design_width(cardinality) == d


def test_design_keeps_block_cost_close() -> None:
    base = block_macs(1, 64)
    for c in (2, 4, 8, 16, 32, 64):
        # d is an integer, so the best match is within half a step of d: under 8% here.
        assert abs(block_macs(c, design_width(c)) / base - 1) < 0.08


def test_design_for_a_narrow_template() -> None:
    """With 16 first-stage planes the group width moves in steps of C: C=8 can only reach 15%."""
    base = block_macs(1, 64, planes=16)
    for c, tolerance in ((2, 0.01), (4, 0.01), (8, 0.15), (16, 0.08)):
        d = design_width(c, planes=16)
        assert abs(block_macs(c, d, planes=16) / base - 1) < tolerance
