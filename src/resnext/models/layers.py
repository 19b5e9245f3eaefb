"""Convolution and normalisation helpers, and the weight initialisation of the original code."""

from __future__ import annotations

import math

from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BN follows every conv, paper section 4)."""
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def norm(channels: int) -> nn.BatchNorm2d:
    """Batch normalisation, the only norm the paper uses."""
    return nn.BatchNorm2d(channels)


def init_conv_(conv: nn.Conv2d, fan_out: int | None = None) -> None:
    """He init with fan-out, as fb.resnet.torch: N(0, sqrt(2 / (k * k * out_channels))).

    `fan_out` lets a branch of forms (a)/(b) use the fan-out of the grouped layer it is a slice
    of, so that all three forms draw weights from the same distribution.
    """
    kh, kw = conv.kernel_size
    fan = fan_out if fan_out is not None else conv.out_channels * kh * kw
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan))


def init_norm_(bn: nn.BatchNorm2d, zero: bool = False) -> None:
    """BN gamma = 1 (or 0 for the last BN of a block, Goyal et al.), beta = 0."""
    nn.init.constant_(bn.weight, 0.0 if zero else 1.0)
    nn.init.zeros_(bn.bias)
