"""Complexity-preserving design (paper Table 2): the width d that keeps a block's cost for a given C."""

from __future__ import annotations

import torch

from resnext.models.blocks import BlockConfig, Bottleneck, bottleneck_width
from resnext.models.complexity import count_complexity
from resnext.models.zoo import BASE_PLANES

BASELINE_WIDTH = 64  # ResNet's bottleneck width d for C = 1


def block_macs(cardinality: int, base_width: int, planes: int = BASE_PLANES, size: int = 56) -> int:
    """MACs of a first-stage bottleneck (4 * planes in and out), counted from the module on meta."""
    with torch.device("meta"):
        block = Bottleneck(4 * planes, planes, 1, BlockConfig(cardinality, base_width))
    return count_complexity(block, (4 * planes, size, size)).macs


def design_width(
    cardinality: int, baseline_width: int = BASELINE_WIDTH, planes: int = BASE_PLANES
) -> int:
    """The d whose C-path block has the MACs closest to the C=1, d=`baseline_width` block.

    Blocks share one template at every depth (section 3.1: each stage doubles the width and
    halves the map, so all stages cost the same), so the answer holds for ResNeXt-50, -101 and
    the CIFAR ResNeXt-29 alike. Table 2: C = 1, 2, 4, 8, 32 gives d = 64, 40, 24, 14, 4.
    """
    if cardinality < 1:
        raise ValueError(f"cardinality must be positive, got {cardinality}")
    target = block_macs(1, baseline_width, planes)
    candidates = [d for d in range(1, 2 * baseline_width + 1) if bottleneck_width(planes, d, 1) > 0]
    return min(candidates, key=lambda d: (abs(block_macs(cardinality, d, planes) - target), d))
