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
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnext.errors import one_line

FORMAT = "resnext-checkpoint/1"


class CheckpointError(ValueError):
    """A model file that cannot be read safely or does not fit."""


def current_umask() -> int:
    """The process's file mode creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic, but brief)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions torch.save (open) would.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write (full disk, file size limit) as a cryptic RuntimeError.
        free = shutil.disk_usage(path.parent).free / 2**20
        reason = one_line(e)
        kept = "the previous file is intact" if existed else f"no checkpoint {path.name} yet"
        raise OSError(
            f"cannot write checkpoint {path} ({free:.0f} MiB free on its disk; {reason}); {kept}"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves that a killed process never finished."""
    stale = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
