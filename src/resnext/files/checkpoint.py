"""Checkpoint files: atomic save, safe load (no code execution), model rebuilt from its spec.

A checkpoint is a dict of plain values (tensors, numbers, strings, lists, dicts), so that
`torch.load(weights_only=True)` reads it. Keys (writers may add more):

    format          "resnext-checkpoint/1"
    model           the model's state_dict (torchvision names)
    spec            ModelSpec.to_dict(); `ModelSpec(**spec)` rebuilds the architecture
    model_name      registered name or None
    class_names     list of class names, or None
    preprocessing   {"resize", "crop", "mean", "std", "interpolation"} for evaluation/predict
    config          the resolved training config (dict), or None
    metrics         final/best metrics (dict), or None
    epoch, step     progress counters (training checkpoints)
    optimizer, scheduler, scaler, ema, rng   training state for exact resume
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from resnext.models.model import ResNeXt
from resnext.models.zoo import ModelSpec

FORMAT = "resnext-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely or does not fit."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write (full disk, file size limit) as a cryptic RuntimeError.
        free = shutil.disk_usage(path.parent).free / 2**20
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(
            f"cannot write checkpoint {path} ({free:.0f} MiB free on its disk; {reason}); "
            "the previous file is intact"
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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without executing code from it (`weights_only=True`).

    Raises CheckpointError with a one-line reason for a missing, truncated or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, "
            "and unpickling them could run code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        reason = (
            str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        )
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt ({reason})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint") -> ResNeXt:
    """Rebuild the model a resnext checkpoint describes and load its weights strictly."""
    if "spec" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a resnext checkpoint (no 'spec'/'model' entries)")
    spec = ModelSpec(**{**ckpt["spec"], "depths": tuple(ckpt["spec"]["depths"])})
    with torch.device("meta"):
        model = ResNeXt(spec)
    try:
        model.load_state_dict(ckpt["model"], strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its spec: {e}") from None
    if ckpt.get("model_name"):
        model.name = ckpt["model_name"]
    return model
