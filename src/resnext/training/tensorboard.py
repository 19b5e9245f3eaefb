"""TensorBoard scalars of a run (`--set tensorboard=true`), written by rank 0 to RUN/tensorboard/.

Every scalar is plotted against the optimizer step, per logged step (train loss, error, lr,
images/s) and at each epoch's end (the same plus validation top-1 / top-5 error), so the two
share one x axis. A resumed run opens its writer with `purge_step` just past the step it resumed
from: TensorBoard then hides what the interrupted attempt wrote after its checkpoint, and every
step shows once. metrics.jsonl stays the record; this is a view of it while training runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnext.extras import require
from resnext.training.config import TrainConfig
from resnext.training.optim import lr_at

_STEP_TAGS = {"loss": "train/loss", "err": "train/top1_error", "img_s": "train/images_per_second"}
_EPOCH_KEYS = ("train_loss", "train_top1_error", "lr", "images_per_second", "val_loss",
               "val_top1_error", "val_top5_error", "val_ema_top1_error", "val_ema_top5_error")  # fmt: skip


def require_tensorboard() -> Any:
    """torch's SummaryWriter, or MissingExtra naming the 'tensorboard' extra."""
    return require("torch.utils.tensorboard", "tensorboard", "tensorboard=true").SummaryWriter


class Board:
    """A run's scalars; does nothing unless `cfg.tensorboard` and this is the main process.

    Built before anything is loaded, so that a missing package fails before any work.
    """

    def __init__(self, cfg: TrainConfig, out: Path, main: bool) -> None:
        self.cfg, self.dir, self.writer = cfg, Path(out) / "tensorboard", None
        self._writer_class = require_tensorboard() if cfg.tensorboard and main else None

    def open(self, step: int) -> None:
        """Start writing at optimizer step `step` (0, or where the run resumed)."""
        if self._writer_class is not None and self.writer is None:
            self.writer = self._writer_class(str(self.dir), purge_step=step + 1)

    def step_logger(self, epoch: int, steps_per_epoch: int):  # -> Callable[[int, dict], None]
        """For Progress: the scalars of step `done` of `epoch` (values: loss, err, img_s)."""

        def write(done: int, values: dict[str, float]) -> None:
            if self.writer is None:
                return
            step = epoch * steps_per_epoch + done
            for key, tag in _STEP_TAGS.items():
                if key in values:
                    self.writer.add_scalar(tag, values[key], step)
            self.writer.add_scalar("train/lr", lr_at(self.cfg, step - 1, steps_per_epoch), step)

        return write

    def epoch(self, metrics: dict[str, Any], step: int) -> None:
        """An epoch's metrics (the line metrics.jsonl gets), at the step it ended on."""
        if self.writer is None:
            return
        for key in _EPOCH_KEYS:
            if metrics.get(key) is not None:  # top-5 is None below 5 classes
                self.writer.add_scalar(f"epoch/{key}", metrics[key], step)
        self.writer.flush()  # a killed run keeps every finished epoch's scalars

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
