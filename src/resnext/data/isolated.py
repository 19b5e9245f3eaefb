"""A reader's scan run in a child process, so that a native library that aborts the process on
a crafted file (pyarrow on some parquet footers: SIGABRT, which no Python error catches) costs
one line naming the file, never the training job.

Only an index build runs here (data/index.py reads a built index in-process). The child is a
fork of this process: it starts in milliseconds and needs nothing re-imported. It says which
file it is reading through a shared integer, and sends back what the index keeps (arrays,
labels and names, the bad samples it noted), so the parent's scan is the one the child made.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import multiprocessing as mp
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np

from resnext.data.bad_images import BadImages
from resnext.data.index import Recorder, replay
from resnext.data.samples import Scan

# scan(root, split, bad, reading): reading(f) is called before the scan reads files[f]
IsolatedScan = Callable[[str, str, BadImages, Callable[[int], None]], Scan]


def scan_in_child(
    scan: IsolatedScan,
    rebuild: Callable[[list[Path], dict[str, np.ndarray]], object],
    files: list[Path],
    what: str,
    root: str,
    split: str,
    bad: BadImages,
) -> Scan:
    """`scan(root, split, bad, reading)` run in a child process; a child that dies is a
    ValueError naming the file of `files` it was reading (`what`: "parquet file") and how it
    died. Where this process cannot fork (not POSIX, or a daemonic process), it runs here."""
    if not can_fork():
        return scan(root, split, bad, lambda f: None)
    ctx = mp.get_context("fork")
    current = ctx.Value("i", -1, lock=False)
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(scan, root, split, current, send))
    child.start()
    send.close()  # the child's end: its death closes the pipe
    try:
        try:
            result = receive.recv()
        except EOFError:
            result = None
        child.join()
    finally:
        if child.is_alive():  # this process was interrupted: the child goes with it
            child.kill()
            child.join()
        receive.close()
    if result is None:
        raise ValueError(_died(child.exitcode, files, current.value, what, root, split))
    kind, payload = result
    if kind == "error":
        raise payload
    arrays, fields, noted = payload
    replay(noted, bad)
    return Scan(rebuild(files, arrays), **fields)


def can_fork() -> bool:
    """Whether this process may fork a child for the scan (POSIX, and not a daemonic process)."""
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def _died(code: int | None, files: list[Path], f: int, what: str, root: str, split: str) -> str:
    if code is not None and code < 0:
        try:
            how = f"by {signal.Signals(-code).name}"
        except ValueError:
            how = f"by signal {-code}"
    else:
        how = f"with exit status {code}"
    where = f"{what} {files[f]}" if 0 <= f < len(files) else f"the {split} files of {root}"
    return f"cannot read {where}: its reader died {how} (a damaged file: replace it)"


def _child(scan: IsolatedScan, root: str, split: str, current, send) -> None:
    """Runs in the child: the scan, and what the parent needs of it, through `send`."""
    faulthandler.disable()  # a crash is the parent's one line, not a dump of this stack
    recorder = Recorder()

    def reading(f: int) -> None:
        current.value = f

    try:
        found = scan(root, split, recorder, reading)
        fields = {f.name: getattr(found, f.name) for f in dataclasses.fields(found)}
        del fields["records"]
        fields["labels"] = np.asarray(found.labels, dtype=np.int64)
        send.send(("scan", (found.records.to_arrays(), fields, recorder.noted)))
    except BaseException as e:  # noqa: BLE001 - every error is the parent's to raise
        try:
            send.send(("error", e))
        except Exception:  # noqa: BLE001 - an error that does not pickle: its text
            send.send(("error", ValueError(str(e))))
    finally:
        send.close()
