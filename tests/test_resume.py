"""Resume is exact with every piece of training state on: a run stopped mid-epoch and resumed
ends with the checkpoint of an uninterrupted run, tensor for tensor (weights, EMA weights,
optimizer momenta, fp16 loss-scaler state, step counts, RNG states) and the same metrics.

Deterministic CPU runs of 2 epochs x 4 steps of 8 images: stopped inside the second epoch, a run
resumes from the end of the first, or, saving every 3 steps, from step 6 (mid-epoch).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

import resnext.training.engine
from resnext.files.model_file import read_model_file
from resnext.training.config import resolve_config
from resnext.training.train import train

BASE = {"epochs": 2, "batch_size": 8, "train_limit": 32, "val_limit": 16, "deterministic": True}
CASES = {
    "plain": {},
    "ema": {"ema_decay": 0.9},
    "fp16": {"precision": "fp16"},
    "mixup_cutmix_smoothing": {"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1},
    "accum_steps": {"accum_steps": 2},
}
TIMING = ("images_per_second", "seconds")


def assert_equal(a, b, where: str = "checkpoint") -> None:
    """Nested checkpoint contents equal: tensors exactly, dicts key for key."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            if k not in TIMING:
                assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def stop_before_step(monkeypatch, step: int) -> None:
    real = resnext.training.engine.train_step

    def stopping(t, *args, **kwargs):
        if t.step + 1 == step:
            raise KeyboardInterrupt
        return real(t, *args, **kwargs)

    monkeypatch.setattr(resnext.training.engine, "train_step", stopping)


def stopped_and_resumed(tmp_path, monkeypatch, cfg, stop: int, where: tuple) -> tuple[dict, dict]:
    """Train `cfg` straight into tmp/straight, and into tmp/run stopped before step `stop`
    (its last.pt then at (epoch, batch, step) `where`) and resumed with resume="auto"; the two
    runs must end alike. Returns the checkpoint stopped at and the final one."""
    train(cfg, tmp_path / "straight")
    real = resnext.training.engine.train_step
    stop_before_step(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    saved = read_model_file(tmp_path / "run" / "last.pt")
    assert (saved["epoch"], saved["batch"], saved["step"]) == where
    monkeypatch.setattr(resnext.training.engine, "train_step", real)
    train(cfg, tmp_path / "run", resume="auto")
    a = read_model_file(tmp_path / "straight" / "last.pt")
    b = read_model_file(tmp_path / "run" / "last.pt")
    for ckpt in (a, b):
        # Training draws from torch's generators only; Python's is saved and restored too, but
        # the first run in a process also moves it (a library draws an id when imported).
        ckpt["rng"].pop("python")
    assert_equal(a, b)
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "run")
    return saved, a


def test_a_run_stopped_after_an_epoch_resumes_from_its_end(tmp_path, monkeypatch):
    """No step checkpoints: stopped inside epoch 2, the run resumes from the end of epoch 1."""
    stopped_and_resumed(tmp_path, monkeypatch, resolve_config("tiny", BASE), 6, (1, 0, 4))


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_resumed_mid_epoch_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, case):
    cfg = resolve_config("tiny", BASE | CASES[case] | {"checkpoint_steps": 3})
    if case == "fp16":
        # The scale doubles after 3 finite steps in a row (not 2000), so it grows, overflows and
        # is halved within the run: the scaler's state changes, and it must cross the resume.
        scaler = functools.partial(torch.amp.GradScaler, growth_interval=3)
        monkeypatch.setattr(torch.amp, "GradScaler", scaler)
    saved, end = stopped_and_resumed(tmp_path, monkeypatch, cfg, 7, (1, 2, 6))
    # The state the case is about was really there, and really changed.
    if case == "ema":
        assert "val_ema_top1_error" in end["metrics"]
        assert not torch.equal(end["ema"]["fc.weight"], end["model"]["fc.weight"])
    if case == "fp16":  # a fresh scaler would not do: the run needs the saved one
        assert (saved["scaler"]["scale"], saved["scaler"]["_growth_tracker"]) != (65536.0, 0)
        assert end["scaler"]["growth_interval"] == 3


def test_a_deterministic_run_leaves_the_process_as_it_found_it(tmp_path):
    """In-process runs (a study, a notebook) must not leave deterministic kernels on: a later
    int8 model's resize has no deterministic kernel and would refuse to run."""
    assert not torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cfg = resolve_config("tiny", {**BASE, "epochs": 1})
    train(cfg, tmp_path / "run")
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark == benchmark
