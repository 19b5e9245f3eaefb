"""The index of a sharded split, built once and read in a second: what the scan of its shards
found (each record's place, its label, the class names, the bad samples and why), kept in one
`.npz` file per split.

The index lies beside the data (`DIR/_index/SPLIT.npz`; `resnext pack` writes it) or, where that
folder is not writable, in the user's cache (`$XDG_CACHE_HOME/resnext/index/`, by default
`~/.cache/resnext/index/`). It is keyed by every file it was built from (name, size, mtime), so
a replaced or truncated shard is noticed: a stale or damaged index is rebuilt with one warning,
never trusted. The first process to come (under torchrun, one rank) takes a lock and builds it
while the others wait and then read it, so N ranks never scan at once.

An index holds numbers and strings only (`np.load(allow_pickle=False)`): nothing in it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from resnext.atomic import write_atomic
from resnext.data.bad_images import BadImages
from resnext.data.samples import Scan

log = logging.getLogger(__name__)

VERSION = 2  # 2: a scan records where its labels came from (.cls or .json)
FOLDER = "_index"


def indexed_scan(
    kind: str,
    root: str,
    split: str,
    bad: BadImages,
    files: list[Path],
    scan: Callable[[str, str, BadImages], Scan],
    rebuild: Callable[[list[Path], dict[str, np.ndarray]], object],
    extra: list[Path] = (),
) -> Scan:
    """The `split` of `root` as `scan` finds it, from its index when the index matches `files`
    (the split's shards, in the scan's order) and `extra` (metadata files), else scanned now and
    indexed.

    `rebuild(files, arrays)` makes the records back from the index's arrays. The bad samples the
    scan met are noted again on `bad` at every load, so that warnings and bad_images="error" act
    alike whether or not the index was read.
    """
    path = index_path(root, split)
    key = {"version": VERSION, "kind": kind, "split": split, "files": _stat(files, root),
           "extra": _stat(extra, root)}  # fmt: skip
    with _locked(path):
        found = _read(path, key, files, rebuild)
        if found is None:
            found = _build(path, key, root, split, scan)
    found_scan, noted = found
    replay(noted, bad)
    return found_scan


def index_path(root: str, split: str) -> Path:
    """Beside the data when that folder is writable, else in the user's cache."""
    base = Path(root)
    if _writable(base):
        return base / FOLDER / f"{split}.npz"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnext" / "index"
    digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
    return cache / f"{base.resolve().name}-{digest}" / f"{split}.npz"


def _writable(base: Path) -> bool:
    folder = base / FOLDER
    return os.access(folder if folder.is_dir() else base, os.W_OK)


def _stat(files: list[Path], root: str) -> list[list]:
    out = []
    for f in files:
        st = f.stat()
        out.append([os.path.relpath(f, root), st.st_size, st.st_mtime_ns])
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`'s lock file while the index is checked and built."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (each process may build its own)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path, key: dict, files: list[Path], rebuild) -> tuple[Scan, list] | None:
    """The index at `path` if it was built from the files of `key`; None (rebuild) otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes())
        if meta["key"] != key:
            changed = _first_change(meta["key"], key)
            log.warning("the index %s is stale (%s): building it again", path, changed)
            return None
        labels = arrays.pop("labels")
        records = rebuild(files, {k[2:]: v for k, v in arrays.items() if k.startswith("r_")})
        scan = Scan(records, labels, meta["classes"], meta["source"], meta["empty"],
                    meta["names_where"], labels_from=meta["labels_from"])  # fmt: skip
        return scan, meta["noted"]
    except Exception as e:  # noqa: BLE001 - numpy's and zipfile's errors on a torn file vary
        log.warning("the index %s is damaged (%s: %s): building it again", path,
                    type(e).__name__, e)  # fmt: skip
        return None


def _first_change(old: dict, new: dict) -> str:
    if old.get("version") != new["version"] or old.get("kind") != new["kind"]:
        return "another version"
    before = {f[0]: f[1:] for f in old.get("files", []) + old.get("extra", [])}
    for name, *st in new["files"] + new["extra"]:
        if name not in before:
            return f"{name} is new"
        if before[name] != st:
            return f"{name} changed: {before[name][0]} bytes before, {st[0]} now"
    return "a file is gone"


def _build(path: Path, key: dict, root: str, split: str, scan) -> tuple[Scan, list]:
    log.info("indexing the %s split of %s (once; kept in %s)", split, root, path)
    recorder = Recorder()
    found = scan(root, split, recorder)
    labels = np.asarray(found.labels, dtype=np.int64)
    meta = {"key": key, "classes": found.classes, "source": found.source, "empty": found.empty,
            "names_where": found.names_where, "labels_from": found.labels_from,
            "noted": recorder.noted}  # fmt: skip
    arrays = {**{f"r_{k}": v for k, v in found.records.to_arrays().items()}, "labels": labels,
              "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}  # fmt: skip
    try:
        write_atomic(path, lambda f: np.savez(f, **arrays))
    except OSError as e:  # a full disk: this run goes on without an index
        log.warning("cannot write the index %s (%s): the next run scans again", path, e)
    _trim_heap()
    return dataclasses.replace(found, labels=labels), recorder.noted


def replay(noted: list[tuple[list[str], str, str]], bad: BadImages) -> None:
    """Note on `bad` what a `Recorder` recorded."""
    for names, reason, summary in noted:
        bad.note_many(names, reason, summary)


class Recorder(BadImages):
    """A policy that only records what a scan notes (replayed on the caller's policy)."""

    def __init__(self) -> None:
        super().__init__()
        self.noted: list[tuple[list[str], str, str]] = []  # (names, reason, summary)

    def note(self, name: str, reason: str) -> None:
        self.noted.append(([name], reason, reason))

    def note_many(self, names: list[str], reason: str, summary: str) -> None:
        self.noted.append((list(names), reason, summary))


def _trim_heap() -> None:
    """Give the heap the scan freed back to the system (glibc keeps it otherwise: the CLI sets
    the trim threshold to its maximum for training's sake)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
