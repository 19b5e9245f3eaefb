"""`train(config, out)`: build, maybe resume, loop (train, evaluate, checkpoint), plot.

A run directory holds config.json, metrics.jsonl (one JSON line per epoch), last.pt, best.pt
and errors.png (rundir.py: never overwritten unasked). Only rank 0 writes; every rank reads the
checkpoint it resumes from. A killed run loses at most the work since its last checkpoint;
SIGTERM/SIGINT save one first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnext.data.batches import eval_batches, train_batches
from resnext.data.datasets import ImageSet
from resnext.files.checkpoint import remove_stale_temporaries
from resnext.files.model_file import read_model_file
from resnext.models.merged import merge_small_groups
from resnext.models.model import build_model
from resnext.models.zoo import get_spec
from resnext.training.config import TrainConfig, save_config
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
from resnext.training.inputs import check_bad_images, load_sets, untouched
from resnext.training.optim import EMA, build_optimizer, lr_at
from resnext.training.plot import plot_run
from resnext.training.progress import Progress
from resnext.training.run_state import Saver, restore
from resnext.training.rundir import (
    RunFinished,
    check_progress,
    claim,
    keep_metrics,
    resume_config,  # noqa: F401  (the command line's, re-exported)
    resume_path,
    run_lock,
)
from resnext.training.stopping import StopSignals, TrainingStopped
from resnext.training.tensorboard import Board

log = logging.getLogger("resnext.training.train")


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a model as `cfg` says, writing the run directory `out`.

    Args:
        cfg: the resolved recipe.
        out: run directory (created). One that already holds a run is refused unless `resume`
            or `overwrite` is given.
        resume: None, "auto" (continue `out` if it holds a run) or a run directory / last.pt.
        overwrite: replace the run in `out` (its files are deleted first).

    Returns:
        The last epoch's metrics plus `best_val_top1_error` and `val_split` (the held-out split
        validated on: "val" or "test"). A resumed run that is already finished is left
        untouched: its last metrics come back with `already_finished` set.
    """
    out = Path(out)
    path = resume_path(resume, out)
    ckpt = read_model_file(path) if path is not None else None
    try:
        if ckpt is not None:
            check_progress(ckpt, cfg.epochs, out)
    except RunFinished:  # the caller says so (`already_finished`)
        if cfg.to_dict() == ckpt.get("config"):  # no other change asked: no data to read
            return _finished(ckpt)
    ctx = setup(cfg.device)
    try:
        # run_lock: rank 0 only, one lock per run
        with StopSignals() as stop, run_lock(out), kernels_restored():
            if ctx.main:
                claim(out, resume, overwrite)
            return _train(cfg, out, (path, ckpt) if ckpt is not None else None, ctx, stop)
    finally:
        teardown()


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: tuple[Path, dict] | None,
    ctx: Context,
    stop: StopSignals,
) -> dict[str, Any]:
    board = Board(cfg, out, ctx.main)  # a missing tensorboard package fails before any work
    log.info("%s", sizes(cfg))
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = load_sets(cfg, ctx)
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
        start_epoch, start_batch, sums, best = restore(t, resume[1], spec, train_set.classes, ctx)
        if (start_epoch, start_batch) == (cfg.epochs, 0):  # finished, and the data still fits
            return _finished(resume[1])
        log.info("resumed %s at epoch %d, batch %d", resume[0], start_epoch, start_batch)
    saver = Saver(t, spec, cfg, train_set.classes, out, best)
    if resume is not None:
        saver.last = f"{out / 'last.pt'} (step {t.step})"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
        remove_stale_temporaries(out)  # left by a process killed while saving
        keep_metrics(out / "metrics.jsonl", start_epoch if resume is not None else 0)
        board.open(t.step)
    log.info("training %s on %d images (%d steps/epoch%s, %d process(es)) into %s",
             cfg.model, len(train_set), steps_per_epoch,
             _left_out(len(train_set), cfg.batch_size), ctx.world, out)  # fmt: skip
    if val_set is not None:
        log.info("validating on the %s split (%d images)%s", val_set.split, len(val_set),
                 untouched(cfg, val_set.split))  # fmt: skip

    def stopped(epoch: int, batch: int) -> TrainingStopped:
        # Mid-epoch: "during epoch 2, step 3/4"; at a boundary: "after epoch 2".
        where = f"during epoch {epoch + 1}, step {batch}/{steps_per_epoch}"
        where = where if batch else f"after epoch {epoch}"
        return TrainingStopped(stop.signum, f"stopped by {stop.name} {where}; saved {saver.last}")

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
        batches = train_batches(
            train_set, cfg.feed(), epoch, start_batch, ctx.rank, ctx.world, ctx.device
        )
        train_set.bad.recount()
        metrics = {"epoch": epoch + 1, "lr": lr}
        try:
            with contextlib.closing(batches):  # an error mid-epoch stops the loader's workers
                metrics |= train_one_epoch(
                    t, batches, cfg, epoch, steps_per_epoch, progress, start_batch, sums, on_step
                )
        except NonFiniteLoss as e:
            raise NonFiniteLoss(
                f"{e} (epoch {epoch + 1}); last good checkpoint: {saver.last}"
            ) from None
        read = (steps_per_epoch - start_batch) * cfg.batch_size
        met = int(all_sum([train_set.bad.met], ctx.device)[0])
        kept = saver.last if saver.last != "none" else "none written yet"
        check_bad_images(train_set.bad, met, read, cfg, f"epoch {epoch + 1}", kept)
        start_batch, sums = 0, None
        metrics |= _validate(t, val_set, cfg, ctx) if val_set is not None else {}
        held_out = val_set.bad.files if val_set is not None else set()
        metrics |= {
            "bad_images": len(train_set.bad.files | held_out),
            "skipped_steps": t.skipped,
        }
        error = metrics.get("val_top1_error")  # None without a held-out split: no best.pt
        saver.best = min(saver.best, error) if error is not None else saver.best
        if ctx.main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            saver.save("last.pt", epoch + 1, 0, metrics, None)
            if error is not None and error <= saver.best:
                saver.save("best.pt", epoch + 1, 0, metrics, None)
            log.info(json.dumps(metrics))
            board.epoch(metrics, t.step)
        barrier()
        if epoch + 1 < cfg.epochs and stop.requested(ctx.device, ctx.world):
            raise stopped(epoch + 1, 0)
    board.close()
    if ctx.main:
        plot_run(out)  # the command line prints where (errors.png)
    if val_set is None:
        return {**metrics, "best_val_top1_error": None, "val_split": "none"}
    return {**metrics, "best_val_top1_error": saver.best, "val_split": val_set.split}


def sizes(cfg: TrainConfig) -> str:
    """The image sizes a run trains and evaluates at, for its first log line."""
    how = {"inception": "random-resized crop", "crop_flip": f"crop, pad {cfg.pad}",
           "none": "as decoded"}[cfg.augment]  # fmt: skip
    view = f"resize {cfg.eval_resize}, centre crop {cfg.eval_crop}"
    return f"trains at {cfg.train_size} px ({how}); evaluates at {cfg.eval_crop} px ({view})"


def _left_out(images: int, batch: int) -> str:
    """What dropping the last partial batch costs every epoch (a batch of fewer images would
    give BN statistics over a few images, and a different step size)."""
    rest = images % batch
    return (
        f"; each epoch leaves out {rest} image{'s' * (rest != 1)} (a partial batch)" if rest else ""
    )


def _finished(ckpt: dict) -> dict[str, Any]:
    """What a finished run measured, from its last checkpoint; nothing is written."""
    best = ckpt.get("best_val_top1_error")
    metrics = ckpt.get("metrics") or {}
    return {**metrics, "best_val_top1_error": best, "already_finished": int(ckpt["epoch"])}


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
    pre = cfg.preprocessing()
    out = {}
    for prefix, model in (("val", t.raw), ("val_ema", t.ema.module if t.ema else None)):
        if model is not None:
            batches = eval_batches(val_set, batch, pre, False, cfg.workers, ctx.rank, ctx.world)
            with contextlib.closing(batches):
                m = evaluate(model, batches, cfg.precision, cfg.channels_last)
            out |= {f"{prefix}_loss": m["loss"], f"{prefix}_top1_error": m["top1_error"]}
            out[f"{prefix}_top5_error"] = m["top5_error"]
    return out


@contextlib.contextmanager
def kernels_restored() -> Iterator[None]:
    """Leave the process's kernel choice (deterministic algorithms, cuDNN benchmark) as the
    run found it: a deterministic run inside a program (a study, a test) must not make a later,
    unrelated op refuse to run (int8 resize has no deterministic kernel)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=warn_only)
        torch.backends.cudnn.benchmark = before[1]


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; in deterministic mode also forbid non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
