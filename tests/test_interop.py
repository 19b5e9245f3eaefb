"""torchvision's and timm's state_dicts load strictly into ours and give the same logits."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from resnext import create_model

from conftest import randomize_bn


def _assert_same_logits(source: torch.nn.Module, name: str) -> None:
    randomize_bn(source)
    with torch.device("meta"):  # every tensor comes from `source`: skip our own init
        ours = create_model(name).eval()
    ours.load_state_dict(source.state_dict(), strict=True, assign=True)  # still checks shapes
    assert not any(t.is_meta for t in ours.state_dict().values())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - source(x)).abs().max().item()
    assert diff <= 1e-5, f"{name}: max abs diff {diff}"


@pytest.mark.parametrize(
    "name",
    ["resnet50", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2"],
)
def test_torchvision_weights_load_strictly_with_equal_logits(name: str) -> None:
    _assert_same_logits(getattr(torchvision.models, name)(weights=None), name)


@pytest.mark.parametrize("name", ["resnext50_32x4d", "resnet18"])
def test_timm_weights_load_strictly_with_equal_logits(name: str) -> None:
    _assert_same_logits(timm.create_model(name, pretrained=False), name)


def test_state_dict_names_are_torchvision_names() -> None:
    with torch.device("meta"):  # names and shapes only
        ours = create_model("resnext50_32x4d").state_dict()
        theirs = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
