"""Training progress: a redrawn bar on an interactive terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("resnext.training.train")


class Progress:
    """Reports one epoch's steps; silent when `enabled` is False (ranks other than 0)."""

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        every: int = 50,
        stream: TextIO | None = None,
        sink: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.total, self.desc, self.enabled, self.every = total, desc, enabled, max(every, 1)
        self.sink = sink  # also gets every `every`-th step's values (TensorBoard)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.drawn = False

    def due(self, done: int) -> bool:
        """Whether step `done` should be shown (every step on a terminal)."""
        return self.enabled and (self.tty or self.scheduled(done))

    def scheduled(self, done: int) -> bool:
        """Whether step `done` is a logged one: the same steps on every rank, so that the
        figures shown there can be summed over ranks (rank 0's terminal is not theirs)."""
        return done % self.every == 0 or done == self.total

    def update(self, done: int, **values: float) -> None:
        """Show `done` of `total` steps with named values (loss, error, images/s)."""
        if not self.enabled:
            return
        if self.sink is not None and (done % self.every == 0 or done == self.total):
            self.sink(done, values)
        text = " ".join(f"{k.replace('_', '/')} {v:.4g}" for k, v in values.items())
        if not self.tty:
            log.info("%s step %d/%d %s", self.desc, done, self.total, text)
            return
        width = 24
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.desc} [{bar}] {done}/{self.total} {text}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line so that log lines start on a fresh one."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
