"""The run directory's rules: one process works in it at a time, a run is never overwritten
unasked, it continues exactly where it was, and it says so when there is nothing left to do.

A run directory holds config.json, metrics.jsonl, last.pt, best.pt and errors.png (train.py).
`train` without `resume` refuses a directory that already holds a run unless told to
overwrite it; with `resume` it continues from last.pt, or, killed before its first checkpoint,
starts again from its config.json; a finished run is left untouched.

`run_lock` holds an flock on DIR/.lock while a process works in a run or study directory. The
kernel drops the lock when the process ends however it ends (SIGKILL, OOM, a node reboot), so a
requeued job is never blocked by a stale lock; a second process is refused, naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnext.files.model_file import read_model_file
from resnext.training.config import (
    TrainConfig,
    apply_overrides,
    check_milestones,
    config_from_dict,
)

log = logging.getLogger("resnext.training.train")

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json", "errors.png")
# What makes a directory hold a run: a checkpoint or an epoch's metrics (config.json alone is
# written at the start, before any work that could be lost).
_RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl")


LOCK_FILE = ".lock"
# Locks this process holds: real path -> [file descriptor, nesting depth].
_held: dict[str, list[int]] = {}


class RunFinished(Exception):
    """`resume` found a run that has already trained every epoch asked for."""


class DirectoryBusy(ValueError):
    """Another process works in the run or study directory (one line, exit status 2)."""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """Hold `folder`'s lock (created if needed) while the block runs; DirectoryBusy if another
    process holds it.

    Only rank 0 locks: under torchrun every rank runs the same command on the one directory.
    Re-entrant within a process (the command line locks, then `train` does).
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    if os.environ.get("RANK", "0") != "0" or key in _held:
        if key in _held:
            _held[key][1] += 1
        try:
            yield
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    check_writable(folder, what)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ValueError(f"cannot write the {what} {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryBusy(
            f"{folder} is in use by {_holder(folder / LOCK_FILE)}: one process works in a "
            f"{what} at a time (wait for it to end, or stop it)"
        ) from None
    except OSError as e:  # a file system without locks (some network mounts): work on
        log.warning("cannot lock %s (%s): nothing stops a second process", folder, e.strerror)
    before = os.fstat(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    if before.st_size:  # bookkeeping: a refused or no-op command leaves every mtime as it was
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # the last descriptor of the lock: the kernel releases it
        if created:  # a command that failed before writing anything leaves no directory
            with contextlib.suppress(OSError):
                if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                    (folder / LOCK_FILE).unlink()
                    folder.rmdir()


def _holder(path: Path) -> str:
    """The holder as it wrote itself into the lock file: "process PID [on HOST]"."""
    try:
        pid, host = path.read_text().split()[:2]
    except (OSError, ValueError):
        return "another process"  # it has the lock but has not written its pid yet
    return f"process {pid}" + ("" if host == socket.gethostname() else f" on {host}")


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the copies of the lock descriptors: the
    lock then ends with the process that took it, not with its last worker."""
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


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
    """The checkpoint to continue from: `out/last.pt` for "auto" (if present), else the path
    given; None also for a run directory killed before its first checkpoint (config.json only),
    which starts again."""
    if resume is None:
        return None
    if resume == "auto":
        return out / "last.pt" if (out / "last.pt").is_file() else None
    path = Path(resume)
    if path.is_dir():
        if (path / "last.pt").is_file():
            return path / "last.pt"
        if (path / "config.json").is_file():
            return None
        raise ValueError(f"nothing to resume: {path} holds neither last.pt nor config.json")
    if not path.is_file():
        raise ValueError(f"nothing to resume: {path} does not exist")
    return path


def resume_config(resume: str, out: Path, overrides: dict[str, Any]) -> TrainConfig | None:
    """The saved config of the run to resume, with explicit command-line overrides applied:
    last.pt's, or config.json's for a run that died before its first checkpoint (SIGKILL, a
    full disk, the out-of-memory killer); None for a new run."""
    path = resume_path(resume, out)
    if path is None:
        run = out if resume == "auto" else Path(resume)
        saved = read_config(run / "config.json")
        if saved is None:
            return None
        log.info("%s has no checkpoint yet: training again from its config.json", run)
        return _checked(apply_overrides(saved, overrides), overrides, None, run)
    ckpt = read_model_file(path)
    if not ckpt.get("config"):
        raise ValueError(f"{path} holds no training config to resume")
    cfg = apply_overrides(config_from_dict(ckpt["config"]), overrides)
    return _checked(cfg, overrides, ckpt, path.parent)


def _checked(cfg: TrainConfig, overrides: dict, ckpt: dict | None, run: Path) -> TrainConfig:
    """Epochs below the trained ones are named first: that is the mistake, not the milestones
    that no longer fit them."""
    if ckpt is not None and "epochs" in overrides:
        with contextlib.suppress(RunFinished):
            check_progress(ckpt, cfg.epochs, run)
    if "epochs" in overrides or "milestones" in overrides:
        check_milestones(cfg)
    return cfg


def read_config(path: Path) -> TrainConfig | None:
    """A run's config.json (None if absent); one that cannot be read is refused, naming it."""
    if not path.is_file():
        return None
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise ValueError(
            f"{path} is not a readable training config ({e}); start the run again with "
            "--overwrite and the options it was started with"
        ) from None


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


def check_writable(out: Path, what: str = "run directory") -> None:
    """Fail before any work if the run (or study) directory cannot be created or written."""
    out = Path(out)
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create the {what} {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the {what} {out}: {parent} is not writable")
