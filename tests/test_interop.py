"""torchvision's and timm's state_dicts load strictly into ours and give the same logits.

Names and shapes are checked for every model torchvision and we both have, at full size on the
meta device (no memory, no init). Logits are compared on real tensors for each kind of block
(basic, bottleneck with C = 1, grouped, wide) in networks of one block per stage built by
torchvision's and timm's own ResNet classes (depth repeats the same block, so it adds cost, not
coverage), plus ResNeXt-50 32x4d at full size.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from timm.models import resnet as timm_resnet
from torchvision.models import resnet as tv_resnet

from resnext import ModelSpec, build_model, create_model, list_models

from conftest import randomize_bn

SHALLOW = (1, 1, 1, 1)


def _assert_same_logits(source: torch.nn.Module, ours: torch.nn.Module) -> None:
    randomize_bn(source)
    ours.load_state_dict(source.state_dict(), strict=True, assign=True)  # still checks shapes
    assert not any(t.is_meta for t in ours.state_dict().values())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours.eval()(x) - source(x)).abs().max().item()
    assert diff <= 1e-5, f"max abs diff {diff}"


def _ours(spec: ModelSpec) -> torch.nn.Module:
    with torch.device("meta"):  # every tensor comes from the source: skip our own init
        return build_model(spec)


@pytest.mark.parametrize(
    ("block", "cardinality", "base_width"),
    [("basic", 1, 64), ("bottleneck", 1, 64), ("bottleneck", 32, 4), ("bottleneck", 1, 128)],
)
def test_torchvision_blocks_load_strictly_with_equal_logits(block, cardinality, base_width):
    kind = tv_resnet.BasicBlock if block == "basic" else tv_resnet.Bottleneck
    source = tv_resnet.ResNet(kind, list(SHALLOW), groups=cardinality, width_per_group=base_width)
    spec = ModelSpec("imagenet", block, SHALLOW, cardinality, base_width)
    _assert_same_logits(source, _ours(spec))


def test_torchvision_resnext50_at_full_size_has_equal_logits() -> None:
    with torch.device("meta"):
        ours = create_model("resnext50_32x4d")
    _assert_same_logits(torchvision.models.resnext50_32x4d(weights=None), ours)


@pytest.mark.parametrize(
    ("block", "cardinality", "base_width"),
    [("basic", 1, 64), ("bottleneck", 32, 4)],
)
def test_timm_blocks_load_strictly_with_equal_logits(block, cardinality, base_width):
    kind = timm_resnet.BasicBlock if block == "basic" else timm_resnet.Bottleneck
    source = timm_resnet.ResNet(kind, list(SHALLOW), cardinality=cardinality, base_width=base_width)
    spec = ModelSpec("imagenet", block, SHALLOW, cardinality, base_width)
    _assert_same_logits(source, _ours(spec))


TORCHVISION_NAMES = [n for n in list_models() if n in torchvision.models.list_models()]


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_state_dict_names_and_shapes_are_torchvision_s(name: str) -> None:
    with torch.device("meta"):  # names and shapes only
        ours = create_model(name).state_dict()
        theirs = torchvision.models.get_model(name, weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("name", ["resnext50_32x4d", "resnext101_32x8d", "resnet18"])
def test_state_dict_names_and_shapes_are_timm_s(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name).state_dict()
        theirs = timm.create_model(name, pretrained=False).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
