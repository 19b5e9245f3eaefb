"""One training epoch and one evaluation pass: plain functions, one path for every device,
precision and world size.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from resnext.data.batches import step_generator
from resnext.data.transforms import mix
from resnext.precision import autocast
from resnext.training.config import TrainConfig
from resnext.training.distributed import all_sum, any_rank
from resnext.training.optim import EMA, lr_at, set_lr
from resnext.training.progress import Progress


@dataclass
class Trainee:
    """What an optimizer step touches. `model` runs forward (maybe DDP- and compile-wrapped),
    `raw` is the plain network whose weights are saved, `ddp` the DDP wrapper if any."""

    model: nn.Module
    raw: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None = None
    ddp: nn.Module | None = None
    step: int = 0
    skipped: int = 0  # steps skipped for a non-finite loss (cfg.skip_nonfinite)


class NonFiniteLoss(RuntimeError):
    """A step's loss was NaN or infinite and cfg.skip_nonfinite is off."""


def to_device(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """Move an input batch, in channels_last layout if asked (faster convs on tensor cores)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def train_step(t: Trainee, x: Tensor, y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """One optimizer step over `accum_steps` micro-batches; returns [loss sum, wrong, images].

    A non-finite loss raises NonFiniteLoss before the weights change, or with
    cfg.skip_nonfinite leaves weights and BN statistics as they were and counts the step.
    """
    device = next(t.raw.parameters()).device
    x, y = to_device(x, device, cfg.channels_last), y.to(device, non_blocking=True)
    # The forward pass moves BN running statistics: keep a copy to undo a skipped step.
    buffers = [b.clone() for b in t.raw.buffers()] if cfg.skip_nonfinite else None
    stats = torch.zeros(3, device=device)
    for i, (xc, yc) in enumerate(zip(x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps))):
        target = yc
        if cfg.mixup > 0 or cfg.cutmix > 0:
            xc, target = mix(xc, yc, t.raw.num_classes, cfg.mixup, cfg.cutmix, gen)
        last = i == cfg.accum_steps - 1
        # Gradients are all-reduced once per step, on the last micro-batch.
        sync = contextlib.nullcontext() if last or t.ddp is None else t.ddp.no_sync()
        with sync:
            with autocast(device, cfg.precision):
                logits = t.model(xc)
                loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            t.scaler.scale(loss / cfg.accum_steps).backward()
        wrong = (logits.detach().argmax(1) != yc).sum()
        stats += torch.stack(
            [loss.detach().float() * len(yc), wrong.float(), stats.new_tensor(len(yc))]
        )
    # One sync per step: the check must come before the update.
    if any_rank(not torch.isfinite(stats[0]).item(), device):
        t.optimizer.zero_grad(set_to_none=True)
        t.step += 1
        if buffers is None:
            raise NonFiniteLoss(f"non-finite loss ({stats[0].item()}) at step {t.step}")
        for b, saved in zip(t.raw.buffers(), buffers):
            b.copy_(saved)
        t.skipped += 1
        return torch.zeros_like(stats)
    if cfg.clip_grad > 0:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.raw.parameters(), cfg.clip_grad)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    if t.ema is not None:
        t.ema.update(t.raw)
    t.step += 1
    return stats


def train_one_epoch(
    t: Trainee,
    batches: Iterable[tuple[Tensor, Tensor]],
    cfg: TrainConfig,
    epoch: int,
    steps_per_epoch: int,
    progress: Progress,
    start: int = 0,
    sums: Tensor | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> dict[str, float]:
    """Train over `batches` (this rank's share); returns metrics reduced over all ranks.

    `start` and `sums` continue an epoch that a step checkpoint interrupted; `on_step(batch,
    sums)` is called after every step (step checkpoints).
    """
    t.model.train()
    device = next(t.raw.parameters()).device
    sums = torch.zeros(3, device=device) if sums is None else sums.to(device)
    began = time.perf_counter()
    seen = 0
    # Under torchrun the step line shows every rank's figures, as the epoch line does: summed
    # at the logged steps only (one small all-reduce per `log_steps`, none on other steps).
    shared = dist.is_initialized()
    for batch, (x, y) in enumerate(batches, start):
        set_lr(t.optimizer, lr_at(cfg, t.step, steps_per_epoch))
        sums += train_step(t, x, y, cfg, step_generator(cfg.seed + 1, epoch, batch))
        seen += len(y)
        if on_step is not None:
            on_step(batch + 1, sums)
        if progress.scheduled(batch + 1) if shared else progress.due(batch + 1):
            figures = [*sums.tolist(), seen]
            loss, wrong, n, images = all_sum(figures, device) if shared else figures
            rate = images / (time.perf_counter() - began)
            progress.update(batch + 1, loss=loss / n, err=100 * wrong / n, img_s=rate)
    progress.close()
    seconds = time.perf_counter() - began
    loss, wrong, n, images = all_sum([*sums.tolist(), seen], device)
    return {
        "train_loss": loss / max(n, 1),
        "train_top1_error": 100 * wrong / max(n, 1),
        "images_per_second": images / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
    }


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 error (percent; top-5 None below 5 classes) and mean loss, over ranks.

    Ten-crop batches (N, 10, C, H, W) are scored by the mean of the crops' softmax outputs.
    """
    # a `with` block, not @torch.no_grad(): mutmut (CONTRIBUTING.md) skips decorated functions
    with torch.no_grad():
        return _evaluate(model, batches, precision, channels_last)


def _evaluate(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], precision: str, channels_last: bool
) -> dict[str, float]:
    model.eval()
    # an exported file (files/programs.py) has no parameters: it runs on the CPU
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    classes = 5
    for x, y in batches:
        x, y = to_device(x, device, False), y.to(device)
        crops = x.shape[1] if x.ndim == 5 else 0
        x = to_device(x.flatten(0, 1) if crops else x, device, channels_last)
        with autocast(device, precision):
            logits = model(x).float()
        if crops:
            logits = logits.softmax(-1).view(len(y), crops, -1).mean(1).log()
        classes = logits.shape[1]
        top = logits.topk(min(5, classes), dim=1).indices
        loss = F.cross_entropy(logits, y, reduction="sum")
        hit1 = (top[:, 0] == y).sum()
        hit5 = (top == y[:, None]).any(1).sum()
        sums += torch.stack([loss.double(), hit1.double(), hit5.double(), sums.new_tensor(len(y))])
    loss, hit1, hit5, n = all_sum(sums.tolist(), device)
    n = max(n, 1)
    return {
        "loss": loss / n,
        "top1_error": 100 * (1 - hit1 / n),
        # With fewer than 5 classes every label is in the top 5: no measurement, so None.
        "top5_error": 100 * (1 - hit5 / n) if classes >= 5 else None,
        "images": int(n),
    }
