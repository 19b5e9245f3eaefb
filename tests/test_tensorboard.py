"""TensorBoard scalars: TensorBoard's own reader gets back what metrics.jsonl holds."""

from __future__ import annotations

import json
import sys

import pytest

from resnext.cli import main
from resnext.training.config import resolve_config
from resnext.training.optim import lr_at
from resnext.training.tensorboard import Board
from resnext.training.train import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_a_run_writes_step_and_epoch_scalars(tmp_path):
    over = {"epochs": 2, "train_limit": 64, "val_limit": 32, "tensorboard": True, "log_steps": 2}
    cfg = resolve_config("tiny", over)
    train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    got = _scalars(tmp_path / "run" / "tensorboard")
    steps = 64 // cfg.batch_size  # 4 per epoch, logged every 2nd
    for tag in ("train/loss", "train/top1_error", "train/lr", "train/images_per_second"):
        assert [s for s, _ in got[tag]] == [2, 4, 6, 8], tag
    assert [v for _, v in got["train/lr"]] == pytest.approx(
        [lr_at(cfg, s - 1, steps) for s in (2, 4, 6, 8)]
    )
    for key in ("val_top1_error", "val_top5_error", "train_loss", "train_top1_error", "lr"):
        assert got[f"epoch/{key}"] == [
            (4, pytest.approx(rows[0][key])),
            (8, pytest.approx(rows[1][key])),
        ], key
    assert got["epoch/images_per_second"][0][1] > 0


def test_off_by_default_and_on_rank_zero_only(tmp_path):
    train(resolve_config("tiny", {"epochs": 1, "train_limit": 32, "val_limit": 16}), tmp_path / "a")
    assert not (tmp_path / "a" / "tensorboard").exists()
    board = Board(resolve_config("tiny", {"tensorboard": True}), tmp_path / "b", main=False)
    board.open(0)
    board.step_logger(0, 4)(2, {"loss": 1.0})
    board.epoch({"val_top1_error": 5.0}, 4)
    board.close()
    assert not (tmp_path / "b").exists()


def test_a_resumed_run_shows_each_step_once(tmp_path):
    """purge_step hides what the interrupted attempt wrote after the checkpoint it resumes from."""
    cfg = resolve_config("tiny", {"tensorboard": True})
    first = Board(cfg, tmp_path, main=True)
    first.open(0)
    for done in range(1, 7):  # the first attempt got to step 6, its last.pt is at step 4
        first.step_logger(0, 10)(done, {"loss": 1.0})
    first.close()
    again = Board(cfg, tmp_path, main=True)
    again.open(4)
    for done in range(5, 9):
        again.step_logger(0, 10)(done, {"loss": 2.0})
    again.epoch({"val_top1_error": 3.0}, 8)
    again.close()
    got = _scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(s, 1.0) for s in range(1, 5)] + [(s, 2.0) for s in range(5, 9)]
    assert got["epoch/val_top1_error"] == [(8, 3.0)]


def test_missing_tensorboard_is_a_one_line_hint_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = ["train", "--recipe", "tiny", "--set", "tensorboard=true", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'tensorboard' extra" in err and "resnext[tensorboard]" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
