"""The run directory's rules: never overwrite a run unasked, continue one exactly where it was,
and say so when there is nothing left to do.

A run directory holds config.json, metrics.jsonl, last.pt, best.pt and errors.png (train.py).
`train` without `resume` refuses a directory that already holds a run unless told to
overwrite it; with `resume` it continues from last.pt, and a finished run is left untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from resnext.files.model_file import read_model_file
from resnext.training.config import (
    TrainConfig,
    apply_overrides,
    check_milestones,
    config_from_dict,
)

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json", "errors.png")
# What makes a directory hold a run: a checkpoint or an epoch's metrics (config.json alone is
# written at the start, before any work that could be lost).
_RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl")


class RunFinished(Exception):
    """`resume` found a run that has already trained every epoch asked for."""


def holds_run(out: Path) -> bool:
    """Whether `out` holds (part of) a training run."""
    return any((out / name).exists() for name in _RUN_MARKERS)


def claim(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing one, unless `overwrite` (then delete it).

    Checked before anything is read or written, so a refused command touches nothing.
    """
    check_writable(out)
    if resume is not None or not holds_run(out):
        return
    if not overwrite:
        raise ValueError(
            f"{out} already holds a run; continue it with --resume auto, or replace it with "
            "--overwrite (or choose another --out)"
        )
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


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
    saved = read_model_file(path).get("config")
    if not saved:
        raise ValueError(f"{path} holds no training config to resume")
    cfg = apply_overrides(config_from_dict(saved), overrides)
    if "epochs" in overrides or "milestones" in overrides:
        check_milestones(cfg)
    return cfg


def check_progress(ckpt: dict, epochs: int, out: Path) -> None:
    """Refuse `epochs` below what the checkpoint has trained; RunFinished if it has them all."""
    done, batch = int(ckpt.get("epoch", 0)), int(ckpt.get("batch", 0))
    if epochs < done + (batch > 0):
        partial = f" and {batch} steps of epoch {done + 1}" if batch else ""
        raise ValueError(
            f"{out} has trained {done} epochs{partial}; epochs={epochs} is fewer "
            f"(give --epochs {done + 1} or more to continue it)"
        )
    if epochs == done and batch == 0:
        raise RunFinished(f"{out} is already finished ({done} epochs)")


def keep_metrics(path: Path, epochs: int) -> None:
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
