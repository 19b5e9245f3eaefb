"""Inference fusion: every BatchNorm folded into the convolution before it.

In eval mode BN is an affine map per channel, so conv-then-BN is one conv with scaled weights and
a bias. Form (a) sums C branch convs before its last BN; the BN's scale goes into every branch
and its shift into the first branch's bias.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from resnext.models.blocks import BottleneckA

_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _fold_into_branches(block: BottleneckA) -> None:
    bn = block.bn3
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    for i, branch in enumerate(block.branches):
        conv = branch.conv3
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1, conv.stride, bias=True)
        fused.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias = nn.Parameter(shift.clone() if i == 0 else torch.zeros_like(shift))
        branch.conv3 = fused
    block.bn3 = nn.Identity()


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each BN folded into its conv; same outputs (to rounding)."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, BottleneckA) and isinstance(module.bn3, nn.BatchNorm2d):
            _fold_into_branches(module)
        for conv_name, bn_name in _PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if (
            isinstance(module, nn.Sequential)
            and len(module) == 2
            and isinstance(module[0], nn.Conv2d)
            and isinstance(module[1], nn.BatchNorm2d)
        ):  # the projection shortcut, `downsample`
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
