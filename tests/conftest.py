"""Shared fixtures: deterministic seeds and small specs."""

from __future__ import annotations

import warnings

import pytest
import torch

from resnext import ModelSpec


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    warnings.filterwarnings(
        "ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning
    )


def tiny_spec(**kw) -> ModelSpec:
    """A small CIFAR-template ResNeXt (one block per stage) for fast tests."""
    args = dict(
        template="cifar",
        block="bottleneck",
        depths=(1, 1, 1),
        cardinality=4,
        base_width=4,
        num_classes=10,
    )
    return ModelSpec(**(args | kw))


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking BN statistics and affine terms, so that eval-mode comparisons test BN."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()
