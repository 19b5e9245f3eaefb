"""`train(config, out)`: build, maybe resume, loop (train, evaluate, checkpoint), plot.

A run directory holds config.json, metrics.jsonl (one JSON line per epoch), last.pt, best.pt
and errors.png. Only rank 0 writes; every rank reads the checkpoint it resumes from. A killed
run loses at most the work since its last checkpoint; SIGTERM/SIGINT save one first (issue 7).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnext.data.batches import eval_batches, train_batches
from resnext.data.datasets import ImageSet, load_dataset
from resnext.files.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
)
from resnext.models.merged import merge_small_groups
from resnext.models.model import build_model
from resnext.models.zoo import get_spec
from resnext.training.config import TrainConfig, apply_overrides, config_from_dict, save_config
from resnext.training.distributed import (
    Context,
    all_sum,
    barrier,
    broadcast_buffers,
    setup,
    teardown,
)
from resnext.training.engine import NonFiniteLoss, Trainee, evaluate, train_one_epoch
from resnext.training.finetune import freeze_stages, start_from
from resnext.training.optim import EMA, build_optimizer, lr_at
from resnext.training.plot import plot_run
from resnext.training.progress import Progress
from resnext.training.run_state import Saver, restore
from resnext.training.stopping import StopSignals, TrainingStopped
from resnext.training.tensorboard import Board

log = logging.getLogger("resnext.training.train")


def train(cfg: TrainConfig, out: str | os.PathLike, resume: str | None = None) -> dict[str, Any]:
    """Train a model as `cfg` says, writing the run directory `out`.

    Args:
        cfg: the resolved recipe.
        out: run directory (created).
        resume: None, "auto" (continue `out` if it holds a run) or a run directory / last.pt.

    Returns:
        The last epoch's metrics plus `best_val_top1_error`.
    """
    ctx = setup(cfg.device)
    try:
        with StopSignals() as stop:
            return _train(cfg, Path(out), resume_path(resume, Path(out)), ctx, stop)
    finally:
        teardown()


def _train(
    cfg: TrainConfig, out: Path, resume: Path | None, ctx: Context, stop: StopSignals
) -> dict[str, Any]:
    if ctx.main:
        check_writable(out)
    board = Board(cfg, out, ctx.main)  # a missing tensorboard package fails before any work
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = _load_data(cfg, ctx)
    spec = get_spec(
        cfg.model,
        num_classes=len(train_set.classes),
        in_channels=train_set.channels,
        form=cfg.form,
        zero_init_residual=cfg.zero_init_residual,
    )
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    t = _build(spec, cfg, ctx)
    if cfg.init and resume is None:  # fine-tuning; a resumed run has its own weights
        start_from(t, cfg, train_set.classes)
    steps_per_epoch = len(train_set) // cfg.batch_size
    start_epoch, start_batch, sums, best = 0, 0, None, float("inf")
    if resume is not None:
        start_epoch, start_batch, sums, best = restore(t, load_checkpoint(resume), spec, ctx)
        log.info("resumed %s at epoch %d, batch %d", resume, start_epoch, start_batch)
    saver = Saver(t, spec, cfg, train_set.classes, out, best)
    if resume is not None:
        saver.last = f"{out / 'last.pt'} (step {t.step})"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
        remove_stale_temporaries(out)  # left by a process killed while saving
        _keep_metrics(out / "metrics.jsonl", start_epoch if resume is not None else 0)
        board.open(t.step)
    log.info("training %s on %d images (%d steps/epoch, %d process(es)) into %s",
             cfg.model, len(train_set), steps_per_epoch, ctx.world, out)  # fmt: skip

    def stopped(epoch: int, batch: int) -> TrainingStopped:
        where = f"epoch {epoch + 1}, step {batch}/{steps_per_epoch}" if batch else f"epoch {epoch}"
        return TrainingStopped(
            stop.signum, f"stopped by {stop.name} after {where}; saved {saver.last}"
        )

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        lr = lr_at(cfg, epoch * steps_per_epoch, steps_per_epoch)  # at the epoch's first step

        def on_step(batch: int, sums: torch.Tensor, epoch: int = epoch) -> None:
            stopping = stop.requested(ctx.device, ctx.world)
            if stopping or (cfg.checkpoint_steps and t.step % cfg.checkpoint_steps == 0):
                total = all_sum(sums.tolist(), ctx.device)
                if ctx.main and (batch < steps_per_epoch or stopping):
                    saver.save("last.pt", epoch, batch, None, total)
            if stopping:
                raise stopped(epoch, batch)

        progress = Progress(
            steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", ctx.main, cfg.log_steps,
            sink=board.step_logger(epoch, steps_per_epoch),
        )  # fmt: skip
        batches = train_batches(train_set, cfg, epoch, start_batch, ctx.rank, ctx.world)
        metrics = {"epoch": epoch + 1, "lr": lr}
        try:
            metrics |= train_one_epoch(
                t, batches, cfg, epoch, steps_per_epoch, progress, start_batch, sums, on_step
            )
        except NonFiniteLoss as e:
            raise NonFiniteLoss(
                f"{e} (epoch {epoch + 1}); last good checkpoint: {saver.last}"
            ) from None
        start_batch, sums = 0, None
        metrics |= _validate(t, val_set, cfg, ctx)
        metrics |= {"bad_images": len(train_set.bad | val_set.bad), "skipped_steps": t.skipped}
        saver.best = min(saver.best, metrics["val_top1_error"])
        if ctx.main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            saver.save("last.pt", epoch + 1, 0, metrics, None)
            if metrics["val_top1_error"] <= saver.best:
                saver.save("best.pt", epoch + 1, 0, metrics, None)
            log.info(json.dumps(metrics))
            board.epoch(metrics, t.step)
        barrier()
        if epoch + 1 < cfg.epochs and stop.requested(ctx.device, ctx.world):
            raise stopped(epoch + 1, 0)
    board.close()
    if ctx.main:
        log.info("plot: %s", plot_run(out))
    return {**metrics, "best_val_top1_error": saver.best}


def _load_data(cfg: TrainConfig, ctx: Context) -> tuple[ImageSet, ImageSet]:
    """Training and validation sets; in-memory images move to the device once."""
    sets = []
    for split, limit in (("train", cfg.train_limit), ("val", cfg.val_limit)):
        data = load_dataset(
            cfg.dataset, cfg.data, split, cfg.in_memory, cfg.download, cfg.bad_images
        )
        data = data.subset(limit)
        if data.images is not None:
            data.images, data.labels = data.images.to(ctx.device), data.labels.to(ctx.device)
        sets.append(data)
    train_set, val_set = sets
    if train_set.classes != val_set.classes:
        raise ValueError("the training and validation sets have different classes")
    if len(cfg.mean) != train_set.channels:
        raise ValueError(f"mean/std have {len(cfg.mean)} values for {train_set.channels} channels")
    memory = train_set.images is not None and cfg.augment != "inception"
    if memory and train_set.images.shape[-1] != cfg.train_size:
        raise ValueError(
            f"images are {train_set.images.shape[-1]} px but train_size={cfg.train_size}; "
            "set train_size (and eval_resize, eval_crop) to match"
        )
    if cfg.batch_size % (ctx.world * cfg.accum_steps):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by processes x accum_steps")
    return train_set, val_set


def _build(spec: Any, cfg: TrainConfig, ctx: Context) -> Trainee:
    """Model on its device (SyncBN, channels_last, merged groups, DDP, compile as asked),
    optimizer, scaler, EMA."""
    raw: nn.Module = build_model(spec)
    if cfg.sync_bn:
        if ctx.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    raw = raw.to(ctx.device)
    freeze_stages(raw, cfg.freeze_stages)  # before the optimizer: frozen tensors stay out
    if cfg.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if cfg.merge_groups and ctx.device.type == "cpu":
        merge_small_groups(raw)
    ddp = None
    model = raw
    if ctx.world > 1:
        ids = [ctx.device] if ctx.device.type == "cuda" else None
        ddp = model = nn.parallel.DistributedDataParallel(raw, device_ids=ids)
    if cfg.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")
    ema = EMA(raw, cfg.ema_decay) if cfg.ema_decay > 0 else None
    return Trainee(model, raw, build_optimizer(raw, cfg), scaler, ema, ddp)


def _validate(t: Trainee, val_set: ImageSet, cfg: TrainConfig, ctx: Context) -> dict[str, float]:
    """Validation error of the weights (and of their EMA), with rank 0's BN statistics."""
    broadcast_buffers(t.raw)
    batch = max(1, cfg.batch_size // ctx.world)
    view = (cfg.eval_resize, cfg.eval_crop, False)
    out = {}
    for prefix, model in (("val", t.raw), ("val_ema", t.ema.module if t.ema else None)):
        if model is not None:
            batches = eval_batches(
                val_set, batch, view, cfg.mean, cfg.std, cfg.workers, ctx.rank, ctx.world
            )
            m = evaluate(model, batches, cfg.precision, cfg.channels_last)
            out |= {f"{prefix}_loss": m["loss"], f"{prefix}_top1_error": m["top1_error"]}
            out[f"{prefix}_top5_error"] = m["top5_error"]
    return out


def resume_path(resume: str | None, out: Path) -> Path | None:
    """The checkpoint to continue from: `out/last.pt` for "auto" (if present), else the path given."""
    if resume is None:
        return None
    if resume == "auto":
        return out / "last.pt" if (out / "last.pt").is_file() else None
    path = Path(resume)
    path = path / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"nothing to resume: {path} does not exist")
    return path


def resume_config(resume: str, out: Path, overrides: dict[str, Any]) -> TrainConfig | None:
    """The saved config of the run to resume, with explicit command-line overrides applied."""
    path = resume_path(resume, out)
    if path is None:
        return None
    saved = load_checkpoint(path).get("config")
    if not saved:
        raise ValueError(f"{path} holds no training config to resume")
    return apply_overrides(config_from_dict(saved), overrides)


def _keep_metrics(path: Path, epochs: int) -> None:
    """Drop metric lines past the resumed epoch (they belong to the interrupted attempt)."""
    kept = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            if json.loads(line)["epoch"] <= epochs:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line torn by a kill
    path.write_text("".join(line + "\n" for line in kept))


def check_writable(out: Path) -> None:
    """Fail before any work if the run directory cannot be created or written."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create run directory {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the run directory {out}: {parent} is not writable")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; in deterministic mode also forbid non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
