"""Complexity-preserving design (paper Table 2): the width d that keeps a block's cost for a given C."""

from __future__ import annotations

import functools

import torch

from resnext.models.blocks import BlockConfig, Bottleneck, bottleneck_width
from resnext.models.complexity import count_complexity, meta_complexity
from resnext.models.zoo import _TEMPLATES as TEMPLATES
from resnext.models.zoo import BASE_PLANES, ModelSpec, default_input_size

BASELINE_WIDTH = 64  # ResNet's bottleneck width d for C = 1


def block_macs(cardinality: int, base_width: int, planes: int = BASE_PLANES, size: int = 56) -> int:
    """MACs of a first-stage bottleneck (4 * planes in and out), counted from the module on meta."""
    with torch.device("meta"):
        block = Bottleneck(4 * planes, planes, 1, BlockConfig(cardinality, base_width))
    return count_complexity(block, (4 * planes, size, size)).macs


def design_width(
    cardinality: int, baseline_width: int = BASELINE_WIDTH, planes: int = BASE_PLANES
) -> int:
    """The d whose C-path block has the MACs closest to the C=1, d=`baseline_width` block
    (the smaller d on a tie).

    Blocks share one template at every depth (section 3.1: each stage doubles the width and
    halves the map, so all stages cost the same), so the answer holds for ResNeXt-50, -101 and
    the CIFAR ResNeXt-29 alike. Table 2: C = 1, 2, 4, 8, 32 gives d = 64, 40, 24, 14, 4.
    The cost rises with d, so d is found by bisection over 1..2 * baseline_width.
    """
    if cardinality < 1:
        raise ValueError(f"cardinality must be positive, got {cardinality}")
    target = block_macs(1, baseline_width, planes)
    first = next(d for d in range(1, 2 * baseline_width + 1) if bottleneck_width(planes, d, 1))
    cost = functools.partial(block_macs, cardinality, planes=planes)
    above = _first_reaching(first, 2 * baseline_width, cost, target)
    below = _first_reaching(first, above, cost, cost(above - 1)) if above > first else above
    return min((below, above), key=lambda d: (abs(cost(d) - target), d))


def _first_reaching(lo: int, hi: int, cost, target: int) -> int:
    """The smallest d in [lo, hi] with cost(d) >= target (hi if none), cost non-decreasing."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if cost(mid) < target else (lo, mid)
    return lo


TOLERANCE = 0.10  # a design more than 10% off the baseline's MACs is no complexity-preserving one


def template_spec(depth: int, cardinality: int, base_width: int, planes: int) -> ModelSpec:
    """The bottleneck network of `depth` (50, 101, 29, ...) with C paths of width d."""
    template, block, depths = TEMPLATES[depth]
    return ModelSpec(template, block, depths, cardinality, base_width, base_planes=planes)


def macs_ratio(depth: int, cardinality: int, d: int, baseline_width: int, planes: int) -> float:
    """The network's MACs at (C, d) over the C = 1 baseline's, counted from the models."""
    size = default_input_size(template_spec(depth, 1, baseline_width, planes))
    full = meta_complexity(template_spec(depth, cardinality, d, planes), size).macs
    return full / _baseline_macs(depth, baseline_width, planes, size)


@functools.cache
def _baseline_macs(depth: int, baseline_width: int, planes: int, size: int) -> int:
    return meta_complexity(template_spec(depth, 1, baseline_width, planes), size).macs


def check_design(depth: int, cardinality: int, d: int, baseline_width: int, planes: int) -> None:
    """Refuse a C whose best d misses the baseline's MACs by more than 10%, naming the nearest
    C that can keep them (past ~C = planes * 2, even d = 1 costs more than the baseline)."""
    ratio = macs_ratio(depth, cardinality, d, baseline_width, planes)
    if abs(ratio - 1) <= TOLERANCE:
        return
    near = nearest_cardinality(depth, cardinality, baseline_width, planes)
    hint = f"; the nearest C that can is {near}" if near else ""
    raise ValueError(
        f"no width keeps C={cardinality} within 10% of the 1x{baseline_width}d baseline's MACs "
        f"(the closest, d={d}, costs {ratio:.2f}x){hint}"
    )


def nearest_cardinality(
    depth: int, cardinality: int, baseline_width: int, planes: int, reach: int = 64
) -> int | None:
    """The C nearest to `cardinality` whose best d is within 10% of the baseline's MACs."""

    def fits(c: int) -> bool:
        return abs(macs_ratio(depth, c, design_width(c, baseline_width, planes),
                              baseline_width, planes) - 1) <= TOLERANCE  # fmt: skip

    # At d = 1 the cost grows with C: above the last C where d = 1 fits, none fits.
    lo, hi = 1, cardinality
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if macs_ratio(depth, mid, 1, baseline_width, planes) <= 1 + TOLERANCE:
            lo = mid
        else:
            hi = mid - 1
    start = min(cardinality, lo)
    for k in range(reach):
        for c in (start - k, start + k):
            if 1 <= c <= lo and c != cardinality and fits(c):
                return c
    return None
