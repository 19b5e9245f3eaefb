"""Graceful stop: SIGTERM or SIGINT asks the trainer to finish its step, save, and exit.

Schedulers (Slurm, Kubernetes, spot pre-emption) send SIGTERM some seconds before SIGKILL; a
second signal falls back to the previous handler, so a double Ctrl-C still stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

import torch

from resnext.training.distributed import all_sum

log = logging.getLogger("resnext.training.train")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """Training stopped on a signal after writing `checkpoint`; exit status 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Within `with`, SIGTERM/SIGINT only set `signum`; the loop polls `requested`."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self, kind: type | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:  # the second signal: the previous behaviour (stop now)
            signal.signal(signum, self._previous.pop(signum, signal.SIG_DFL))  # type: ignore[arg-type]
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("%s: stopping after this step (send it again to stop at once)", self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def requested(self, device: torch.device, world: int) -> bool:
        """Whether any process was signalled (all ranks must stop at the same step)."""
        if world == 1:
            return self.signum != 0
        flags = all_sum([float(self.signum), float(self.signum != 0)], device)
        if flags[1] and not self.signum:
            self.signum = int(flags[0] / flags[1])
        return flags[1] > 0
