"""Grouped 3x3 convs of the model family, run as they are and with groups merged.

    python benchmarks/groups.py            # channels_last, forward + full backward, ~2 min

For each grouped conv shape, times forward plus backward (input and weight gradients) with the
groups as built (merge 1) and merged 2, 4, ... times into wider groups with a block-diagonal
weight (`resnext.models.merged.MergedGroupsConv2d`), which does `merge` times the multiply-adds. The
rule `merge_small_groups` applies (merge groups of fewer than 4 channels) comes from this table
and from whole training steps (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from resnext.allocator import tune_allocator

# (batch, channels, size, groups, stride): the study's C = 8 member at batch 128 (3-, 6- and
# 12-channel groups), its C = 4 member (6-channel), and ResNeXt-50 32x4d at batch 32.
SHAPES = [
    (128, 24, 32, 8, 1),
    (128, 48, 32, 8, 2),
    (128, 96, 16, 8, 2),
    (128, 24, 32, 4, 1),
    (32, 128, 56, 32, 1),
    (32, 256, 56, 32, 2),
    (32, 256, 28, 32, 1),
    (32, 512, 14, 32, 1),
]


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def time_conv(x: torch.Tensor, channels: int, groups: int, stride: int, reps: int) -> float:
    """Forward + backward (input and weight gradients) of one grouped 3x3 conv, ms."""
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
    w = torch.randn(channels, channels // groups, 3, 3)
    w = w.contiguous(memory_format=fmt) if fmt else w
    y = F.conv2d(x, w, None, stride, 1, 1, groups)
    grad = torch.randn_like(y)
    args = ([stride] * 2, [1, 1], [1, 1], False, [0, 0], groups, [True, True, False])

    def step() -> None:
        F.conv2d(x, w, None, stride, 1, 1, groups)
        torch.ops.aten.convolution_backward(grad, x, w, None, *args)

    return median_ms(step, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["nchw", "nhwc"], default="nhwc")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    tune_allocator()
    fmt = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    print(
        "| batch | channels | size | groups | channels per group | stride | ms per merge 1, 2, 4... |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for batch, channels, size, groups, stride in SHAPES:
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
        merges = [m for m in (1, 2, 4, 8) if groups % m == 0]
        ms = [time_conv(x, channels, groups // m, stride, args.reps) for m in merges]
        cells = ", ".join(f"x{m}: {t:.0f}" for m, t in zip(merges, ms))
        width = channels // groups
        print(f"| {batch} | {channels} | {size} | {groups} | {width} | {stride} | {cells} |")


if __name__ == "__main__":
    main()
