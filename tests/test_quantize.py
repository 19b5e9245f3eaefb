"""int8 post-training quantization: runs, is int8, and agrees with fp32 on most inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resnext import ModelSpec, build_model
from resnext.inference.quantize import quantize_int8


def smooth_images(n: int, g: torch.Generator) -> torch.Tensor:
    """Images with spatial structure (upsampled noise), standardised like real inputs."""
    x = torch.rand(n, 3, 8, 8, generator=g)
    return F.interpolate(x, size=32, mode="bilinear") * 2 - 1


@torch.no_grad()
def discriminative_model(calibration: list[torch.Tensor], g: torch.Generator) -> torch.nn.Module:
    """A random network with BN statistics of the data and a centred classifier, so that its
    predictions spread over the classes instead of collapsing onto one (as untrained nets do)."""
    model = build_model(ModelSpec("cifar", "bottleneck", (1, 1, 1), 4, 4, 10)).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches
    for batch in calibration:
        model(batch)
    model.eval()
    feats = torch.cat([model.forward_head(model.forward_features(b), True) for b in calibration])
    model.fc.weight.copy_(torch.randn(10, feats.shape[1], generator=g) / (feats.std(0) + 1e-6))
    model.fc.bias.copy_(-model.fc.weight @ feats.mean(0))
    return model


def test_int8_model_runs_and_agrees_with_fp32_top1():
    g = torch.Generator().manual_seed(0)
    calibration = [smooth_images(32, g) for _ in range(2)]
    model = discriminative_model(calibration, g)
    qmodel = quantize_int8(model, calibration)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in qmodel.modules())
    x = smooth_images(128, g)
    with torch.no_grad():
        ref, got = model(x).argmax(1), qmodel(x).argmax(1)
    assert ref.bincount(minlength=10).gt(0).sum() >= 5  # a non-trivial classifier
    agreement = (ref == got).float().mean().item()
    assert agreement >= 0.7, agreement
