"""Optimiser, learning-rate schedule and weight EMA: the optimisation half of a recipe."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from resnext.training.config import TrainConfig


def peak_lr(cfg: TrainConfig) -> float:
    """`lr` scaled linearly with the global batch (Goyal et al.; the paper's 0.1 per 256)."""
    return cfg.lr * cfg.batch_size / cfg.lr_batch


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov as the original code) or AdamW; optionally no weight decay on BN and biases.

    Frozen parameters are left out. Groups carry an `lr_scale`: `backbone_lr_scale` for all but
    the classifier (fc), which fine-tuning trains at the full rate.
    """
    by_kind: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = 0.0 if cfg.no_wd_norm_bias and p.ndim <= 1 else cfg.weight_decay
            scale = 1.0 if name.startswith("fc.") else cfg.backbone_lr_scale
            by_kind.setdefault((wd, scale), []).append(p)
    groups = [
        {"params": ps, "weight_decay": wd, "lr_scale": scale, "lr": peak_lr(cfg) * scale}
        for (wd, scale), ps in by_kind.items()
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=peak_lr(cfg))
    return torch.optim.SGD(
        groups, lr=peak_lr(cfg), momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
    )


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step `step`: linear warm-up, then step decay or cosine."""
    base = peak_lr(cfg)
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:  # a fractional warm-up's last step ends past it: capped at the peak
        return base * min(1.0, (step + 1) / warm)
    if cfg.schedule == "step":  # divided by 10 at each milestone epoch (section 4, Appendix A)
        epoch = step // steps_per_epoch
        return base * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    t = (step - warm) / max(1, cfg.epochs * steps_per_epoch - warm)
    return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a rate to every parameter group, times the group's `lr_scale` (fine-tuning)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class EMA:
    """Exponential moving average of a model's weights; BN buffers are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def update(self, model: nn.Module) -> None:
        """Move the average towards the current weights."""
        with torch.no_grad():  # not a decorator: mutmut skips decorated functions
            for e, m in zip(self.module.parameters(), model.parameters()):
                e.lerp_(m.detach(), 1 - self.decay)
            for e, m in zip(self.module.buffers(), model.buffers()):
                e.copy_(m)
