"""A ResNeXt as the backbone of torchvision's detectors (Faster R-CNN, RetinaNet, Mask R-CNN).

    backbone = resnext.fpn_backbone("resnext50_32x4d", weights="torchvision")
    detector = torchvision.models.detection.FasterRCNN(backbone, num_classes=91)

The result is torchvision's own `BackboneWithFPN`, built as its `resnet_fpn_backbone` builds one
from a torchvision ResNet, with the same module names (`body.conv1`, `body.layer1.0.conv2`,
`fpn.inner_blocks.0`), so detection checkpoints of torchvision's ResNet-FPN models fit it.
`backbone_with_fpn` builds it around a network; `resnext.fpn_backbone` (files/pretrained.py)
first builds the network by name, with weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from resnext.models.model import ResNeXt


def backbone_with_fpn(
    model: ResNeXt,
    trainable_stages: int = 3,
    returned_stages: Sequence[int] = (1, 2, 3, 4),
    frozen_bn: bool = False,
    out_channels: int = 256,
) -> nn.Module:
    """A torchvision `BackboneWithFPN` over the stages of `model` (its weights are shared).

    Args:
        model: the network, e.g. from `resnext.create_model(name, weights=...)`.
        trainable_stages: stages that train, counted from the last; the stem counts as one
            more (torchvision's `trainable_layers`: 0..5 for the ImageNet template, 3 default).
        returned_stages: stages (1 = conv2 ... 4 = conv5) whose outputs feed the FPN.
        frozen_bn: replace BN by torchvision's FrozenBatchNorm2d (fixed statistics and affine).
        out_channels: channels of every FPN level.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    name = getattr(model, "name", None) or "this model"
    stages = model.num_stages
    if not 0 <= trainable_stages <= stages + 1:
        raise ValueError(
            f"trainable_stages={trainable_stages} is out of range for {name}: use 0..{stages + 1} "
            f"({stages} stages and the stem)"
        )
    returned = sorted(set(returned_stages))
    if not returned or returned[0] < 1 or returned[-1] > stages:
        raise ValueError(
            f"returned_stages={list(returned_stages)} is out of range for {name}: "
            f"each must be in 1..{stages}"
        )
    body = stem_and_stages(model, returned[-1])
    train = [f"layer{i}" for i in range(stages, 0, -1)] + ["conv1", "bn1"]
    train = train[: trainable_stages + (trainable_stages == stages + 1)]
    for param_name, p in body.named_parameters():
        if not any(param_name.startswith(part + ".") for part in train):
            p.requires_grad_(False)
    if frozen_bn:
        freeze_batchnorm(body)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)},
        in_channels_list=[model.feature_info[k - 1]["num_chs"] for k in returned],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def stem_and_stages(model: ResNeXt, last: int) -> nn.Sequential:
    """The network up to stage `last`, as children in execution order (torchvision's
    IntermediateLayerGetter runs children in order; ResNeXt registers maxpool before bn1)."""
    parts = [("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu)]
    parts.append(("maxpool", model.maxpool))
    parts += [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, last + 1)]
    return nn.Sequential(OrderedDict(parts))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` by torchvision's FrozenBatchNorm2d, in place."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module
