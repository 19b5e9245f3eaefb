"""Residual blocks: the ResNet basic block and the ResNeXt bottleneck in the three forms of Figure 3.

All blocks share one signature, `Block(in_channels, planes, stride, cfg)`, and compute

    y = relu(transform(x) + shortcut(x))

where the transformation is the aggregated one of eq. (3). The three bottleneck forms compute the
same function (paper section 3.3); `resnext.models.forms` converts weights between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnext.models.layers import conv1x1, conv3x3, init_conv_, init_norm_, norm

Form = Literal["a", "b", "c"]
Shortcut = Literal["A", "B", "C"]


@dataclass(frozen=True)
class BlockConfig:
    """Per-block hyperparameters, shared by every block of a network (rule 1 of section 3.1)."""

    cardinality: int = 1
    base_width: int = 64
    shortcut: Shortcut = "B"
    stride_in_1x1: bool = False
    zero_init_residual: bool = False
    residual: bool = True


def bottleneck_width(planes: int, base_width: int, cardinality: int) -> int:
    """Width of the grouped 3x3 conv: int(planes * d / 64) * C, as in the original code."""
    return int(planes * base_width / 64) * cardinality


class ZeroPadShortcut(nn.Module):
    """Shortcut type A: identity, subsampled by the stride, zero-padded to the output width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))


def make_shortcut(
    kind: Shortcut, in_channels: int, out_channels: int, stride: int
) -> nn.Module | None:
    """None (identity), a zero-padded identity (A) or a 1x1 projection + BN (B where shapes change, C)."""
    changes = stride != 1 or in_channels != out_channels
    if kind == "C" or (kind == "B" and changes):
        proj = nn.Sequential(conv1x1(in_channels, out_channels, stride), norm(out_channels))
        init_conv_(proj[0])
        init_norm_(proj[1])
        return proj
    if kind == "A" and changes:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return None


class Residual(nn.Module):
    """relu(transform(x) + shortcut(x)); `residual=False` drops the shortcut (section 5.1 ablation)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, cfg: BlockConfig) -> None:
        super().__init__()
        self.out_channels = planes * self.expansion
        self.residual = cfg.residual
        self.relu = nn.ReLU(inplace=True)
        self._shortcut_args = (cfg.shortcut, in_channels, self.out_channels, stride)
        self.downsample: nn.Module | None = None

    def attach_shortcut(self) -> None:
        """Create the shortcut last, so that state_dict keys come in torchvision's order."""
        if self.residual:
            self.downsample = make_shortcut(*self._shortcut_args)
        del self._shortcut_args

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.transform(x)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BasicBlock(Residual):
    """3x3 conv, BN, ReLU, 3x3 conv, BN: the ResNet-18/34 baseline block."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, cfg: BlockConfig) -> None:
        super().__init__(in_channels, planes, stride, cfg)
        if cfg.cardinality != 1 or cfg.base_width != 64:
            raise ValueError("basic blocks support only cardinality=1 and base_width=64")
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm(planes)
        init_conv_(self.conv1)
        init_conv_(self.conv2)
        init_norm_(self.bn1)
        init_norm_(self.bn2, zero=cfg.zero_init_residual)
        self.attach_shortcut()

    def transform(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(Residual):
    """Form (c): 1x1, BN, ReLU, grouped 3x3 (C groups), BN, ReLU, 1x1, BN. torchvision's names."""

    def __init__(self, in_channels: int, planes: int, stride: int, cfg: BlockConfig) -> None:
        super().__init__(in_channels, planes, stride, cfg)
        width = bottleneck_width(planes, cfg.base_width, cfg.cardinality)
        s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, s1)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, s3, groups=cfg.cardinality)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, self.out_channels)
        self.bn3 = norm(self.out_channels)
        for conv in (self.conv1, self.conv2, self.conv3):
            init_conv_(conv)
        init_norm_(self.bn1)
        init_norm_(self.bn2)
        init_norm_(self.bn3, zero=cfg.zero_init_residual)
        self.attach_shortcut()

    def transform(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class Branch(nn.Module):
    """One of the C paths of forms (a)/(b): 1x1 (d), BN, ReLU, 3x3 (d), BN, ReLU[, 1x1 (out)]."""

    def __init__(
        self, in_channels: int, d: int, out_channels: int, stride: int, cfg: BlockConfig
    ) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, d, s1)
        self.bn1 = norm(d)
        self.conv2 = conv3x3(d, d, s3)
        self.bn2 = norm(d)
        self.relu = nn.ReLU(inplace=True)
        # Each branch is a slice of form (c)'s layers: initialise with their fan-out.
        init_conv_(self.conv1, fan_out=d * cfg.cardinality)
        init_conv_(self.conv2, fan_out=9 * d * cfg.cardinality)
        init_norm_(self.bn1)
        init_norm_(self.bn2)
        self.conv3 = conv1x1(d, out_channels) if out_channels > 0 else None
        if self.conv3 is not None:
            init_conv_(self.conv3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return out if self.conv3 is None else self.conv3(out)


class BottleneckA(Residual):
    """Form (a): C branches, each ending in its own 1x1 to the output width, summed, then BN."""

    def __init__(self, in_channels: int, planes: int, stride: int, cfg: BlockConfig) -> None:
        super().__init__(in_channels, planes, stride, cfg)
        d = bottleneck_width(planes, cfg.base_width, cfg.cardinality) // cfg.cardinality
        self.branches = nn.ModuleList(
            Branch(in_channels, d, self.out_channels, stride, cfg) for _ in range(cfg.cardinality)
        )
        self.bn3 = norm(self.out_channels)
        init_norm_(self.bn3, zero=cfg.zero_init_residual)
        self.attach_shortcut()

    def transform(self, x: Tensor) -> Tensor:
        return self.bn3(torch.stack([branch(x) for branch in self.branches]).sum(0))


class BottleneckB(Residual):
    """Form (b): C branches of 1x1 and 3x3, concatenated early, then one 1x1 and BN."""

    def __init__(self, in_channels: int, planes: int, stride: int, cfg: BlockConfig) -> None:
        super().__init__(in_channels, planes, stride, cfg)
        width = bottleneck_width(planes, cfg.base_width, cfg.cardinality)
        d = width // cfg.cardinality
        self.branches = nn.ModuleList(
            Branch(in_channels, d, 0, stride, cfg) for _ in range(cfg.cardinality)
        )
        self.conv3 = conv1x1(width, self.out_channels)
        self.bn3 = norm(self.out_channels)
        init_conv_(self.conv3)
        init_norm_(self.bn3, zero=cfg.zero_init_residual)
        self.attach_shortcut()

    def transform(self, x: Tensor) -> Tensor:
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.bn3(self.conv3(out))


BOTTLENECKS: dict[str, type[Residual]] = {"a": BottleneckA, "b": BottleneckB, "c": Bottleneck}
