"""The ResNeXt network (paper Table 1): stem, stages of identical blocks, global pool, fc."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from resnext.models.blocks import BOTTLENECKS, BasicBlock, BlockConfig, Residual
from resnext.models.layers import conv3x3, init_conv_, init_norm_, norm
from resnext.models.zoo import ModelSpec, get_spec

STAGE_NAMES = ("conv2", "conv3", "conv4", "conv5")  # the paper's names for the stage outputs


def block_class(spec: ModelSpec) -> type[Residual]:
    """The block type of a spec: basic, or the bottleneck in the spec's form."""
    return BasicBlock if spec.block == "basic" else BOTTLENECKS[spec.form]


def make_stage(spec: ModelSpec, index: int, in_channels: int) -> nn.Sequential:
    """One stage: blocks of one spatial size with shared hyperparameters; the first one downsamples."""
    cls = block_class(spec)
    cfg = BlockConfig(
        spec.cardinality,
        spec.base_width,
        spec.shortcut,
        spec.stride_in_1x1,
        spec.zero_init_residual,
        spec.residual,
    )
    planes = spec.planes[index]
    out_channels = planes * cls.expansion
    blocks = [
        cls(
            in_channels if i == 0 else out_channels,
            planes,
            2 if (i == 0 and index > 0) else 1,
            cfg,
        )
        for i in range(spec.depths[index])
    ]
    return nn.Sequential(*blocks)


class ResNeXt(nn.Module):
    """ResNeXt / ResNet from a ModelSpec, with torchvision's state_dict names."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        stem = spec.base_planes
        if spec.template == "imagenet":
            self.conv1 = nn.Conv2d(spec.in_channels, stem, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(spec.in_channels, stem)
            self.maxpool = nn.Identity()
        self.bn1 = norm(stem)
        self.relu = nn.ReLU(inplace=True)
        init_conv_(self.conv1)
        init_norm_(self.bn1)

        expansion = block_class(spec).expansion
        self.num_stages = len(spec.depths)
        widths = [stem] + [planes * expansion for planes in spec.planes]
        for i in range(4):
            # CIFAR has three stages; an empty layer4 keeps forward() scriptable and adds no keys.
            stage = make_stage(spec, i, widths[i]) if i < self.num_stages else nn.Identity()
            setattr(self, f"layer{i + 1}", stage)
        self.num_features = widths[-1]
        first = 4 if spec.template == "imagenet" else 1  # the stride of the stem
        self.feature_info = [
            {"module": f"layer{i + 1}", "num_chs": widths[i + 1], "reduction": first * 2**i}
            for i in range(self.num_stages)
        ]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(spec.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the fc layer (num_classes=0 leaves pooled features as the output)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def stem(self, x: Tensor) -> Tensor:
        """conv1 of Table 1: conv, BN, ReLU (and the 3x3/2 max pool of the ImageNet template)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Outputs of every stage (conv2..conv5 in the paper's names), for detection backbones."""
        x = self.stem(x)
        out: dict[str, Tensor] = {}
        x = self.layer1(x)
        out["conv2"] = x
        x = self.layer2(x)
        out["conv3"] = x
        x = self.layer3(x)
        out["conv4"] = x
        if self.num_stages > 3:
            x = self.layer4(x)
            out["conv5"] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, before pooling."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, then fc unless `pre_logits`."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(spec: ModelSpec) -> ResNeXt:
    """Build the network a spec describes."""
    return ResNeXt(spec)


def create_model(name: str, **overrides: Any) -> ResNeXt:
    """Build a named variant, e.g. `create_model("resnext50_32x4d", num_classes=10, form="a")`.

    Options that the name does not fix (num_classes, form, shortcut, ...) may be overridden;
    overriding cardinality, width or depth with another value raises ValueError. The
    architecture only: `resnext.create_model(name, weights=...)` also loads weights.
    """
    if "weights" in overrides:
        raise TypeError("models.create_model builds the architecture only; "
                        "resnext.create_model(name, weights=...) loads weights")  # fmt: skip
    model = ResNeXt(get_spec(name, **overrides))
    model.name = name
    return model
