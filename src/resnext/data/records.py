"""Where a data set's images live: `Records`, encoded images reached by index in the set's order,
and `OpenFiles`, the one per-process cache of open files that every sharded reader uses.

Image folders give `FileRecords` (a path per image); WebDataset shards (data/wds.py) and parquet
files (data/parquet.py) give `ShardRecords`, whose images are byte ranges or rows of a few large
files. Either way, `open(i)` hands the one decoder (data/images.py) what it reads.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import IO, Any, Protocol


class Records(Protocol):
    """Encoded images reached by index, in the set's order."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str:
        """What warnings print for record `i`: a path, `SHARD.tar:KEY` or `FILE.parquet:ROW`."""
        ...

    def open(self, i: int) -> tuple[str | Path | IO[bytes], str]:
        """Record `i` as (what `images.decode_image` reads, its name); OSError if unreadable."""
        ...

    def take(self, keep: list[int]) -> Records:
        """The records at `keep`, in that order."""
        ...


class NamedBytes(io.BytesIO):
    """An encoded image in memory that PIL's errors name by its record (not by an address)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.record = name

    def __repr__(self) -> str:
        return self.record


class FileRecords:
    """One file per image (image folders): PIL reads the path itself."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return str(self.paths[i])

    def open(self, i: int) -> tuple[Path, str]:
        return self.paths[i], str(self.paths[i])

    def take(self, keep: list[int]) -> FileRecords:
        return FileRecords([self.paths[i] for i in keep])


class ShardRecords:
    """Images inside a few large files: a subclass says how to name and read record `i`."""

    handles: OpenFiles

    def name(self, i: int) -> str:
        raise NotImplementedError

    def read(self, i: int) -> bytes:
        """The encoded image of record `i` (raises OSError when it cannot be read)."""
        raise NotImplementedError

    def open(self, i: int) -> tuple[NamedBytes, str]:
        name = self.name(i)
        return NamedBytes(self.read(i), name), name


class OpenFiles:
    """Files opened lazily by `opener(key)` in the process that reads, at most `limit` at a time
    (the least recently used closed first), with `local`, a dict for the process's own state.

    Neither the handles nor `local` cross a fork or a pickle: a DataLoader worker opens its own
    (two processes sharing one file offset, or a pyarrow reader, would corrupt each other).
    """

    def __init__(self, opener: Callable[[Hashable], Any], limit: int | None = None) -> None:
        self.opener, self.limit = opener, limit or open_file_limit()
        self._handles: OrderedDict[Hashable, Any] = OrderedDict()
        self._local: dict = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict(), "_local": {}}

    def _own(self) -> None:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours
            self._handles, self._local, self._pid = OrderedDict(), {}, os.getpid()

    @property
    def local(self) -> dict:
        self._own()
        return self._local

    def get(self, key: Hashable) -> Any:
        """The open handle of `key`, opened now if it is not open."""
        self._own()
        handle = self._handles.pop(key, None)
        if handle is None:
            handle = self.opener(key)
            if len(self._handles) >= self.limit:
                _close(self._handles.popitem(last=False)[1])
        self._handles[key] = handle  # most recently used last
        return handle


def open_file_limit(margin: int = 256) -> int:
    """How many files one cache may hold open: the process's limit (raised to its hard limit
    where that is higher) less `margin` for everything else, so that a worker keeps every shard
    of an epoch open (ImageNet: 1,024) and an image costs one positioned read, not an open."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return max(16, (65536 if soft == resource.RLIM_INFINITY else soft) - margin)


def _close(handle: Any) -> None:
    os.close(handle) if isinstance(handle, int) else handle.close()


def open_fd(path: str | os.PathLike) -> int:
    """A read-only file descriptor (for `os.pread`: no shared offset, no buffering)."""
    return os.open(path, os.O_RDONLY)
