"""Fine-tuning: a run that starts from pretrained weights (`init`), with frozen early stages.

    resnext train --recipe finetune --init torchvision --data DIR --out RUN
    resnext train ... --init RUN0/best.pt --set freeze_stages=3      (only the classifier learns)

`init` loads every tensor but the classifier strictly (files/pretrained.py); the run's
normalisation, evaluation sizes and training size default to the weights' preprocessing, because
pretrained features only mean something on inputs normalised and sized as in pretraining (a
32-px CIFAR model fine-tunes at 32 px, not at the recipe's 224, which would also cost 49x the
memory). `freeze_stages=K` freezes
the stem and the first K stages: no gradients, and their BN layers stay in eval mode while the
rest trains, so their running statistics remain the file's (a small fine-tuning batch would
otherwise overwrite statistics estimated on the whole pretraining set).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnext.files.interop import architecture_name
from resnext.files.pretrained import check_fits, read_pretrained, transfer
from resnext.models.model import ResNeXt
from resnext.models.zoo import get_spec
from resnext.training.config import TrainConfig, resolve_config

log = logging.getLogger(__name__)

# Config fields the weights' preprocessing sets unless the command line gives them.
_FROM_WEIGHTS = ("mean", "std", "eval_resize", "eval_crop", "eval_interpolation")


class EvalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: normalises with its running statistics and never
    updates them, whatever `train()` says. Same parameters, buffers and state_dict."""

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


def finetune_config(recipe: str, overrides: dict[str, Any]) -> TrainConfig:
    """`resolve_config`, checked for fine-tuning before anything is written: `init` must be
    readable and fit the model, `freeze_stages` must be in range; the weights' mean/std and
    eval sizes fill in what `overrides` does not set, and without `--model` the run trains the
    architecture the weights are for (the recipe's model only names short sources' weights)."""
    cfg = resolve_config(recipe, overrides)
    src = read_pretrained(cfg.init, cfg.model, cfg.form) if cfg.init else None
    if src is not None and "model" not in overrides:
        overrides = {**overrides, "model": architecture_name(src.spec)}
        cfg = resolve_config(recipe, overrides)
    stages = len(get_spec(cfg.model).depths)
    check_freeze(cfg.freeze_stages, stages, cfg.model)
    if src is None:
        return cfg
    spec = get_spec(
        cfg.model, num_classes=src.spec.num_classes, in_channels=src.spec.in_channels,
        form=cfg.form,
    )  # fmt: skip
    with torch.device("meta"):  # only the names and shapes are compared here
        probe = ResNeXt(spec)
    probe.name = cfg.model
    check_fits(src, probe, where=cfg.init)
    pre = src.preprocessing
    if pre is None:
        return cfg
    values = {"mean": pre.mean, "std": pre.std, "eval_resize": pre.resize, "eval_crop": pre.crop,
              "eval_interpolation": pre.interpolation}  # fmt: skip
    fill = {k: values[k] for k in _FROM_WEIGHTS if k not in overrides}
    if "train_size" not in overrides:  # the size the features were trained to see
        fill["train_size"] = overrides.get("eval_crop", pre.crop)
    if fill:
        log.info("preprocessing of %s: %s", cfg.init, fill)
    return resolve_config(recipe, {**overrides, **fill})


def init_weights(model: ResNeXt, cfg: TrainConfig, class_names: Sequence[str]) -> list[str]:
    """Load `cfg.init` into a freshly built training model; returns the re-initialised keys."""
    src = read_pretrained(cfg.init, cfg.model, cfg.form)
    model.name = cfg.model
    reinit = transfer(src, model, class_names, where=cfg.init)
    log.info(
        "initialised from %s%s", cfg.init,
        f"; new classifier: {', '.join(reinit)}" if reinit else " (classifier too)",
    )  # fmt: skip
    return reinit


def check_freeze(stages: int, available: int, model: str) -> None:
    """freeze_stages must be 0..the model's stage count (all of them: only the head learns)."""
    if not 0 <= stages <= available:
        raise ValueError(
            f"freeze_stages={stages} is out of range for {model}: it has {available} stages, "
            f"so use 0..{available} ({available} trains the classifier only)"
        )


def freeze_stages(model: ResNeXt, stages: int) -> list[str]:
    """Freeze the stem and the first `stages` stages in place; returns the frozen parameters."""
    check_freeze(stages, model.num_stages, getattr(model, "name", None) or "the model")
    if stages == 0:
        return []
    parts = ["conv1", "bn1"] + [f"layer{i + 1}" for i in range(stages)]
    frozen = []
    for part in parts:
        module = getattr(model, part)
        for name, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{part}.{name}")
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.__class__ = EvalBatchNorm2d  # same fields: BatchNorm2d and SyncBatchNorm
                m.eval()
    log.info("frozen: the stem and stages 1..%d (%d tensors)", stages, len(frozen))
    return frozen


def start_from(t: Any, cfg: TrainConfig, class_names: Sequence[str]) -> None:
    """A new run's weights from `cfg.init` (the trainee's model and its EMA copy)."""
    init_weights(t.raw, cfg, class_names)
    if t.ema is not None:
        t.ema.module.load_state_dict(t.raw.state_dict())
