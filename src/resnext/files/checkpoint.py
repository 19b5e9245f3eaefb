"""Training checkpoints: the atomic writer of last.pt/best.pt (files/model_file.py reads them).

A checkpoint is a dict of plain values (tensors, numbers, strings, lists, dicts), so that
`torch.load(weights_only=True)` reads it. Keys (writers may add more):

    format          "resnext-checkpoint/1"
    model           the model's state_dict (torchvision names)
    spec            ModelSpec.to_dict(); `ModelSpec(**spec)` rebuilds the architecture
    model_name      registered name or None
    class_names     list of class names, or None
    preprocessing   Preprocessing.to_dict() (resize, crop, interpolation, mean, std, channels)
    config          the resolved training config (dict), or None
    metrics         final/best metrics (dict), or None
    epoch, step     progress counters (training checkpoints)
    optimizer, scheduler, scaler, ema, rng   training state for exact resume
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from resnext.atomic import current_umask, write_atomic
from resnext.errors import one_line

__all__ = ["FORMAT", "CheckpointError", "current_umask", "remove_stale_temporaries",
           "save_checkpoint"]  # fmt: skip

FORMAT = "resnext-checkpoint/1"


class CheckpointError(ValueError):
    """A model file that cannot be read safely or does not fit."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically (resnext.atomic): a crash at any moment leaves either the
    previous file or the new one, never a torn file."""
    path = Path(path)
    existed = path.exists()
    try:
        return write_atomic(path, lambda f: torch.save({"format": FORMAT, **payload}, f))
    except (OSError, RuntimeError) as e:
        # torch reports a failed write (full disk, file size limit) as a cryptic RuntimeError.
        free = shutil.disk_usage(path.parent).free / 2**20
        reason = one_line(e)
        kept = "the previous file is intact" if existed else f"no checkpoint {path.name} yet"
        raise OSError(
            f"cannot write checkpoint {path} ({free:.0f} MiB free on its disk; {reason}); {kept}"
        ) from None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves that a killed process never finished."""
    stale = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
