"""The optimisation half of a recipe against torch's own pieces: the learning-rate schedule
against torch.optim.lr_scheduler (LinearLR warm-up, CosineAnnealingLR, MultiStepLR) stepped once
per optimizer step, the parameter groups against the model's module types (BN weights and all
biases without weight decay when asked, the classifier at the full rate when fine-tuning), and
the weight EMA against its closed form e_k = decay * e_(k-1) + (1 - decay) * w_k in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from resnext.models.model import build_model
from resnext.models.zoo import ModelSpec
from resnext.training.config import resolve_config
from resnext.training.optim import EMA, build_optimizer, lr_at, peak_lr, set_lr

SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, num_classes=5, in_channels=1)


def _torch_lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The rate of each of `steps` optimizer steps, the scheduler stepped after each."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _sgd(lr: float) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize(
    "overrides, steps_per_epoch",
    [
        ({"batch_size": 128, "lr_batch": 256, "epochs": 12}, 7),
        ({"batch_size": 64, "lr": 0.4, "epochs": 5, "warmup_epochs": 2}, 3),
        ({"batch_size": 32, "lr": 0.05, "lr_batch": 16, "epochs": 9, "warmup_epochs": 1}, 11),
    ],
)
def test_cosine_schedule_is_torch_s_warmup_then_cosine_annealing(overrides, steps_per_epoch):
    cfg = resolve_config("digits", {"schedule": "cosine", **overrides})
    peak = cfg.lr * cfg.batch_size / cfg.lr_batch  # linear scaling (Goyal et al.)
    assert peak_lr(cfg) == pytest.approx(peak, rel=1e-12)
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    expected = []
    if warm:  # LinearLR's rate at step k: peak * (1 + k) / warm
        linear = torch.optim.lr_scheduler.LinearLR(_sgd(peak), 1 / warm, 1.0, warm - 1)
        expected += _torch_lrs(linear, warm)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(_sgd(peak), total - warm)
    expected += _torch_lrs(cosine, total - warm)
    ours = [lr_at(cfg, s, steps_per_epoch) for s in range(total)]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12 * peak)
    assert lr_at(cfg, total + 3, steps_per_epoch) == pytest.approx(0.0, abs=1e-12)  # stays at 0


@pytest.mark.parametrize(
    "overrides, steps_per_epoch",
    [
        ({"epochs": 10, "milestones": (3, 6, 9)}, 4),
        ({"epochs": 7, "milestones": (2, 5), "gamma": 0.5, "batch_size": 256}, 5),
        ({"epochs": 8, "milestones": (4,), "gamma": 0.2, "warmup_epochs": 2}, 3),
        ({"epochs": 6, "milestones": (2, 4), "warmup_epochs": 2}, 5),  # decay as warm-up ends
    ],
)
def test_step_schedule_is_torch_s_multistep(overrides, steps_per_epoch):
    cfg = resolve_config("digits", {"schedule": "step", **overrides})
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    multistep = torch.optim.lr_scheduler.MultiStepLR(
        _sgd(peak_lr(cfg)), [m * steps_per_epoch for m in cfg.milestones], cfg.gamma
    )
    expected = _torch_lrs(multistep, total)
    if warm:
        linear = torch.optim.lr_scheduler.LinearLR(_sgd(peak_lr(cfg)), 1 / warm, 1.0, warm - 1)
        expected[:warm] = _torch_lrs(linear, warm)
    ours = [lr_at(cfg, s, steps_per_epoch) for s in range(total)]
    np.testing.assert_allclose(ours, expected, rtol=1e-9)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
@pytest.mark.parametrize("warmup, steps_per_epoch", [(0.3, 7), (0.5, 5), (1.7, 3)])
def test_a_fractional_warmup_rises_to_the_peak_and_never_passes_it(
    schedule, warmup, steps_per_epoch
):
    """The study's recipe warms up for 0.3 epochs: 2.1 steps at 7 steps an epoch."""
    cfg = resolve_config(
        "digits", {"schedule": schedule, "epochs": 6, "milestones": (4,), "warmup_epochs": warmup}
    )
    lrs = np.array([lr_at(cfg, s, steps_per_epoch) for s in range(6 * steps_per_epoch)])
    warm = int(np.ceil(warmup * steps_per_epoch))  # the steps that start inside the warm-up
    assert lrs.max() <= peak_lr(cfg) * (1 + 1e-12)
    assert np.all(np.diff(lrs[:warm]) > 0)  # rising through the warm-up
    whole = int(warmup * steps_per_epoch)  # steps that end inside it: peak * (s + 1) / warm-up
    np.testing.assert_allclose(
        lrs[:whole], peak_lr(cfg) * np.arange(1, whole + 1) / (warmup * steps_per_epoch)
    )


def _no_decay_by_module(model: nn.Module) -> set[int]:
    """Ids of BN weights and biases and of every bias, found from the module types."""
    ids = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            ids |= {id(p) for p in module.parameters(recurse=False)}
        elif getattr(module, "bias", None) is not None:
            ids.add(id(module.bias))
    return ids


@pytest.mark.parametrize("no_wd_norm_bias", [False, True])
@pytest.mark.parametrize("backbone_lr_scale", [1.0, 0.1])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_parameter_groups_follow_the_module_types(no_wd_norm_bias, backbone_lr_scale, optimizer):
    torch.manual_seed(0)
    model = build_model(SPEC)
    model.conv1.requires_grad_(False)  # frozen: not in the optimizer at all
    cfg = resolve_config(
        "digits",
        {"no_wd_norm_bias": no_wd_norm_bias, "backbone_lr_scale": backbone_lr_scale,
         "optimizer": optimizer, "weight_decay": 3e-4, "batch_size": 32, "lr": 0.2},
    )  # fmt: skip
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)
    no_decay = _no_decay_by_module(model)
    classifier = {id(p) for p in model.fc.parameters()}
    seen = []
    for g in opt.param_groups:
        for p in g["params"]:
            seen.append(id(p))
            wd = 0.0 if no_wd_norm_bias and id(p) in no_decay else 3e-4
            scale = 1.0 if id(p) in classifier else backbone_lr_scale
            assert g["weight_decay"] == wd and g["lr_scale"] == scale
            assert g["lr"] == pytest.approx(0.2 * 32 / 64 * scale)
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))
    assert id(model.conv1.weight) not in seen
    kinds = {(g["weight_decay"], g["lr_scale"]) for g in opt.param_groups}
    assert len(kinds) == len(opt.param_groups)  # one group per (decay, scale)
    if optimizer == "sgd":
        assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)


@pytest.mark.parametrize("recipe, nesterov", [("imagenet", True), ("cifar", False)])
def test_sgd_momentum_and_nesterov_are_the_recipe_s(recipe, nesterov):
    model = build_model(SPEC)
    for momentum in (0.9, 0.0):
        cfg = resolve_config(recipe, {"momentum": momentum})
        for g in build_optimizer(model, cfg).param_groups:
            # torch refuses Nesterov without momentum: it is dropped there
            assert g["momentum"] == momentum and g["nesterov"] == (nesterov and momentum > 0)
            assert g["dampening"] == 0


def test_set_lr_scales_each_group_by_its_lr_scale():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD(
        [{"params": [a], "lr_scale": 0.25}, {"params": [b], "lr_scale": 1.0}, {"params": [c]}],
        lr=1.0,
    )
    for lr in (0.3, 0.07):
        set_lr(opt, lr)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr / 4, lr, lr])


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_ema_is_the_closed_form_average_and_copies_buffers(decay):
    torch.manual_seed(1)
    model = build_model(SPEC)
    start = [p.detach().double().numpy().copy() for p in model.parameters()]
    ema = EMA(model, decay)
    assert ema.module is not model and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    expected = start
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            for b in model.buffers():
                if b.is_floating_point():
                    b.add_(torch.rand_like(b))
                else:
                    b.add_(1)
        weights = [p.detach().double().numpy() for p in model.parameters()]
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
        ema.update(model)
        for e, got in zip(expected, ema.module.parameters()):
            np.testing.assert_allclose(got.double().numpy(), e, rtol=1e-5, atol=1e-6)
        for b, got in zip(model.buffers(), ema.module.buffers()):
            assert torch.equal(b, got)  # BN statistics copied, not averaged
    assert model.training  # the trained model is left as it was
