"""Schedules, optimiser groups, EMA, one training step in every precision, evaluation counts."""

import dataclasses
import math

import pytest
import torch

from resnext.models.model import build_model
from resnext.models.zoo import ModelSpec
from resnext.training.config import resolve_config
from resnext.training.engine import Trainee, evaluate, train_step
from resnext.training.optim import EMA, build_optimizer, lr_at, peak_lr

SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, num_classes=5, in_channels=1)


def test_step_schedule_divides_by_ten_at_milestones():
    cfg = resolve_config("imagenet", {"batch_size": 512})
    assert peak_lr(cfg) == pytest.approx(0.2)  # linear scaling from 0.1 at 256
    lrs = [lr_at(cfg, e * 10, 10) for e in (0, 29, 30, 59, 60, 90, 99)]
    assert lrs == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.0002, 0.0002])


def test_cosine_with_warmup():
    cfg = resolve_config("digits", {"epochs": 10, "warmup_epochs": 2, "lr_batch": 64})
    assert lr_at(cfg, 0, 10) == pytest.approx(0.1 / 20)
    assert lr_at(cfg, 19, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 60, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(cfg, 99, 10) < 1e-3


def test_no_weight_decay_on_norm_and_bias():
    model = build_model(SPEC)
    groups = build_optimizer(
        model, resolve_config("digits", {"no_wd_norm_bias": True})
    ).param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(
        p.ndim == 1 for p in groups[1]["params"]
    )
    assert groups[0]["nesterov"]


def test_ema_moves_towards_weights():
    model = build_model(SPEC)
    ema = EMA(model, 0.9)
    before = ema.module.fc.weight.clone()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.fc.weight, before + 0.1, atol=1e-6)


def _trainee(cfg):
    torch.manual_seed(0)
    model = build_model(SPEC)
    scaler = torch.amp.GradScaler("cpu", enabled=cfg.precision == "fp16")
    return Trainee(model, model, build_optimizer(model, cfg), scaler)


@pytest.mark.parametrize(
    "extra",
    [
        {"precision": "bf16", "channels_last": True},
        {"precision": "fp16", "clip_grad": 1.0},
        {"mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1},
    ],
)
def test_train_step_options(extra):
    cfg = resolve_config("tiny", {"batch_size": 8, "accum_steps": 2, **extra})
    t = _trainee(cfg)
    before = t.raw.conv1.weight.clone()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    loss, wrong, n = train_step(t, x, y, cfg, torch.Generator().manual_seed(0)).tolist()
    assert n == 8 and 0 <= wrong <= 8 and math.isfinite(loss)
    assert t.step == 1 and not torch.equal(before, t.raw.conv1.weight)


def test_accumulation_equals_one_big_batch_without_bn_coupling():
    """Two micro-batches of 4 give the gradient of the batch of 8 (BN in eval mode here)."""
    cfg = resolve_config("tiny", {"batch_size": 8, "weight_decay": 0.0, "momentum": 0.0})
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    results = []
    for accum in (1, 2):
        t = _trainee(cfg)
        t.model.eval()  # BN with fixed statistics: both batchings compute the same function
        train_step(t, x, y, dataclasses.replace(cfg, accum_steps=accum), None)
        results.append(t.raw.fc.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_evaluate_counts_top1_and_top5():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.flatten(1)[:, :6] + self.w

    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1, 6, 5, 4, 3, 2], [1, 2, 3, 4, 5, 6]])
    y = torch.tensor([0, 2, 0])  # top-1 right, top-5 right, both wrong
    ten = logits.view(3, 1, 6, 1, 1).expand(3, 10, 6, 1, 1)
    for x in (logits.view(3, 6, 1, 1), ten):
        m = evaluate(Fixed(), [(x, y)])
        assert m["images"] == 3
        assert m["top1_error"] == pytest.approx(200 / 3) and m["top5_error"] == pytest.approx(
            100 / 3
        )
