"""What a training checkpoint holds beyond the weights, and how a run is continued exactly.

`Saver` writes last.pt / best.pt (checkpoint.py's atomic format) with the optimizer, scaler, EMA,
step, partial-epoch sums and every RNG's state; `restore` loads them back so that a resumed run
is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnext.files.checkpoint import CheckpointError, save_checkpoint
from resnext.training.config import TrainConfig
from resnext.training.distributed import Context
from resnext.training.engine import NonFiniteLoss, Trainee


class Saver:
    """Rank 0's checkpoint writer for one run; remembers the last `last.pt` for messages."""

    def __init__(
        self, t: Trainee, spec: Any, cfg: TrainConfig, classes: list[str], out: Path, best: float
    ) -> None:
        self.t, self.spec, self.cfg, self.classes, self.out = t, spec, cfg, classes, out
        self.best = best  # the best validation error so far, saved with every checkpoint
        self.last = "none"

    def payload(self, epoch: int, batch: int, metrics: dict | None, sums: list | None) -> dict:
        t = self.t
        return {
            **weights_and_meta(t.raw, self.spec, self.cfg, self.classes),
            "metrics": metrics,
            "epoch": epoch,
            "step": t.step,
            "batch": batch,
            "train_sums": sums,
            "best_val_top1_error": self.best,
            "skipped_steps": t.skipped,
            "optimizer": t.optimizer.state_dict(),
            "scheduler": {"kind": self.cfg.schedule, "step": t.step},
            "scaler": t.scaler.state_dict(),
            "ema": None if t.ema is None else t.ema.module.state_dict(),
            "rng": rng_state(),
        }

    def save(
        self, name: str, epoch: int, batch: int, metrics: dict | None, sums: list | None
    ) -> None:
        """Write `name` atomically; weights that are not finite are never saved."""
        if not all(bool(p.isfinite().all()) for p in self.t.raw.parameters()):
            raise NonFiniteLoss(f"non-finite weights at step {self.t.step}")
        save_checkpoint(self.out / name, self.payload(epoch, batch, metrics, sums))
        if name == "last.pt":
            self.last = f"{self.out / name} (step {self.t.step})"


def weights_and_meta(model: nn.Module, spec: Any, cfg: TrainConfig, classes: list[str]) -> dict:
    """The part of a checkpoint that predict/evaluate/export need (checkpoint.py's schema)."""
    return {
        "model": {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        "spec": spec.to_dict(),
        "model_name": cfg.model,
        "class_names": list(classes),
        "preprocessing": cfg.preprocessing().to_dict(),
        "config": cfg.to_dict(),
    }


def restore(
    t: Trainee, ckpt: dict, spec: Any, classes: list[str], ctx: Context
) -> tuple[int, int, torch.Tensor | None, float]:
    """Load training state for an exact continuation; returns (epoch, batch, sums, best).

    Another architecture or other classes than the checkpoint's are refused, naming them.
    """
    theirs = ckpt.get("spec") or {}
    differ = [k for k, v in spec.to_dict().items() if k in theirs and theirs[k] != v]
    other_classes = class_difference(ckpt.get("class_names"), classes)
    if differ or "optimizer" not in ckpt:
        have = ", ".join(f"{k}={theirs[k]!r}" for k in differ) or "no training state"
        want = ", ".join(f"{k}={getattr(spec, k)!r}" for k in differ) or "optimizer, step, rng"
        why = f" (classes: {other_classes})" if other_classes else ""
        raise CheckpointError(
            f"cannot resume: the checkpoint holds {have}; this run needs {want}{why}"
        )
    if other_classes:
        raise CheckpointError(f"cannot resume: the data's classes are not the checkpoint's: "
                              f"{other_classes}")  # fmt: skip
    t.raw.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scaler.load_state_dict(ckpt["scaler"])
    if t.ema is not None and ckpt.get("ema") is not None:
        t.ema.module.load_state_dict(ckpt["ema"])
    t.step, t.skipped = int(ckpt["step"]), int(ckpt.get("skipped_steps", 0))
    set_rng_state(ckpt["rng"])
    sums = ckpt.get("train_sums")
    # Saved sums are already totals over ranks: rank 0 carries them, the others start at zero.
    sums = torch.tensor(sums if ctx.main else [0.0] * len(sums)) if sums else None
    return int(ckpt["epoch"]), int(ckpt.get("batch", 0)), sums, float(ckpt["best_val_top1_error"])


def class_difference(saved: list[str] | None, classes: list[str]) -> str:
    """How the data's classes differ from the checkpoint's, or "" (a renamed class folder
    would silently swap labels, a new one change the head)."""
    if saved is None or list(saved) == list(classes):
        return ""
    gone = [c for c in saved if c not in classes]
    new = [c for c in classes if c not in saved]
    if gone or new:
        parts = [f"only the checkpoint has {_names(gone)}" if gone else "",
                 f"only the data has {_names(new)}" if new else ""]  # fmt: skip
        return "; ".join(p for p in parts if p)
    return f"the same classes in another order ({_names(saved)} vs {_names(classes)})"


def _names(classes: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(c) for c in classes[:most])
    return shown + (f" and {len(classes) - most} more" if len(classes) > most else "")


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
