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
