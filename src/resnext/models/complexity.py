"""Parameters, multiply-adds and activations, counted from a model instance with forward hooks.

"FLOPs" in the paper are multiply-adds (MACs). Counted: every conv and linear layer, including
bias additions (so ResNet-50 has 4,089,185,256 MACs at 224x224, 1,000 more than PyTorch's
FlopCounterMode, which leaves out the fc bias). BN, ReLU, pooling and the residual additions are
not counted, as in the paper and pycls. Activations are the output elements of conv and linear
layers (pycls's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from resnext.models.model import build_model
from resnext.models.zoo import ModelSpec


@dataclass
class Complexity:
    """Per-image complexity: totals and a breakdown by top-level part (stem, stages, head)."""

    params: int = 0
    macs: int = 0
    activations: int = 0
    stages: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "macs": self.macs,
            "activations": self.activations,
            "stages": self.stages,
        }


_PART_NAMES = {"conv1": "conv1", "bn1": "conv1", "fc": "fc"} | {
    f"layer{i}": f"conv{i + 1}" for i in range(1, 5)
}


def _part(name: str) -> str:
    top = name.split(".")[0]
    return _PART_NAMES.get(top, top or "model")


def _layer_cost(module: nn.Module, output: Tensor) -> tuple[int, int]:
    """(MACs, output elements) of one conv or linear call, per image."""
    per_image = output.numel() // output.shape[0]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = per_image * (module.in_channels // module.groups) * kh * kw
    else:
        macs = per_image * module.in_features
    if module.bias is not None:
        macs += per_image
    return macs, per_image


@torch.no_grad()
def count_complexity(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)
) -> Complexity:
    """Count params, MACs and activations of `model` on one image of `input_size` (C, H, W).

    Runs one forward pass in eval mode on the model's device (use the meta device to count
    without computing: `with torch.device("meta"): model = create_model(...)`).
    """
    result = Complexity()
    for name, p in model.named_parameters():
        stage = result.stages.setdefault(_part(name), {"params": 0, "macs": 0, "activations": 0})
        stage["params"] += p.numel()
        result.params += p.numel()

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            macs, acts = _layer_cost(module, output)
            stage = result.stages.setdefault(
                _part(name), {"params": 0, "macs": 0, "activations": 0}
            )
            stage["macs"] += macs
            stage["activations"] += acts
            result.macs += macs
            result.activations += acts

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return result


def meta_complexity(spec: ModelSpec, size: int) -> Complexity:
    """Complexity of the network `spec` on `size` x `size` images, built on the meta device:
    no memory and no arithmetic, so even ResNeXt-101 counts in milliseconds."""
    with torch.device("meta"):
        model = build_model(spec)
    return count_complexity(model, (spec.in_channels, size, size))
