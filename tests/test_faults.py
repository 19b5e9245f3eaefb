"""Faults injected for real: SIGKILL, SIGTERM and SIGINT of real training processes,
non-finite losses. A killed run resumes with `--resume auto` and ends with the weights of an
uninterrupted run; the previous checkpoint always loads.

Every run uses one thread: on 2 shared cores, threads spinning against other jobs make a step
10x slower, and one thread keeps the killed processes and the in-process resumes (which save a
process start each) on the same kernels.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnext.cli import main
from resnext.files.model_file import read_model_file
from resnext.training.config import resolve_config
from resnext.training.engine import NonFiniteLoss
from resnext.training.rundir import keep_metrics
from resnext.training.train import train

from conftest import digit_image, write_image_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# 2 epochs of 4 steps (64 images, batch 16), deterministic.
ARGS = ["train", "--recipe", "tiny", "--epochs", "2", "--deterministic",
        "--set", "train_limit=64", "--set", "val_limit=32"]  # fmt: skip

# `resnext train` with pauses at chosen moments, so that a test can signal it there: before
# step FAULT_PAUSE_STEP runs, or inside the FAULT_PAUSE_SAVE-th save of last.pt, after the
# temporary file is written and before the rename. FAULT_STEP_DELAY slows every step.
LAUNCHER = """
import os, sys, time
from pathlib import Path
import resnext.files.checkpoint, resnext.training.engine
from resnext.cli import main

marker = Path(os.environ["FAULT_MARKER"])
pause_step = int(os.environ.get("FAULT_PAUSE_STEP", "0"))
pause_save = int(os.environ.get("FAULT_PAUSE_SAVE", "0"))
nap = float(os.environ.get("FAULT_NAP", "600"))
delay = float(os.environ.get("FAULT_STEP_DELAY", "0"))
real_step, real_replace, saves = resnext.training.engine.train_step, os.replace, []

def train_step(t, *args, **kwargs):
    if t.step + 1 == pause_step:
        marker.write_text(f"step {t.step + 1}")
        time.sleep(nap)
    time.sleep(delay)
    return real_step(t, *args, **kwargs)

def replace(src, dst):
    if Path(dst).name == "last.pt":
        saves.append(dst)
        if len(saves) == pause_save:
            marker.write_text(f"save {len(saves)}")
            time.sleep(nap)
    return real_replace(src, dst)

resnext.training.engine.train_step = train_step
resnext.files.checkpoint.os.replace = replace
sys.exit(main(sys.argv[1:]))
"""


def start(tmp: Path, run: Path, *extra: str, **fault: float) -> subprocess.Popen:
    """A training process with fault hooks (see LAUNCHER)."""
    (tmp / "launch.py").write_text(LAUNCHER)
    (tmp / "marker").unlink(missing_ok=True)
    env = ENV | {"FAULT_MARKER": str(tmp / "marker")}
    env |= {k: str(v) for k, v in fault.items()}
    cmd = [sys.executable, str(tmp / "launch.py"), *ARGS, "--out", str(run), *extra]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, for signals sent to the group
    )  # fmt: skip


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120, since: int = 0) -> None:
    """Until `path` exists (and was written after the time `since`)."""
    deadline = time.monotonic() + timeout
    while mtime(path) <= since:
        if proc.poll() is not None:
            pytest.fail(f"the process ended ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.01)


def kill(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def resume(run: Path) -> None:
    """`resnext train --out RUN --resume auto`, in this process."""
    assert main(["train", "--out", str(run), "--resume", "auto"]) == 0


@pytest.fixture(scope="module")
def straight(tmp_path_factory, one_thread) -> dict:
    """The final weights of the uninterrupted run."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main([*ARGS, "--out", str(run)]) == 0
    return read_model_file(run / "last.pt")["model"]


def assert_weights(run: Path, expected: dict) -> None:
    ckpt = read_model_file(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["batch"] == 0
    assert all(torch.equal(ckpt["model"][k], expected[k]) for k in expected)


def test_sigkill_mid_epoch_resumes_from_the_epoch_boundary_exactly(tmp_path, straight):
    run = tmp_path / "run"
    proc = start(tmp_path, run, FAULT_PAUSE_STEP=6)  # epoch 2, before its second step
    wait_for(tmp_path / "marker", proc)
    assert kill(proc)[0] == -signal.SIGKILL
    ckpt = read_model_file(run / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 0, 4)
    resume(run)
    assert_weights(run, straight)


def test_sigkill_while_writing_a_checkpoint_loses_at_most_the_step_interval(
    tmp_path, straight, caplog
):
    run = tmp_path / "run"
    # Saves of last.pt: step 2 (step checkpoint), then the end of epoch 1 (step 4): killed there.
    proc = start(tmp_path, run, "--set", "checkpoint_steps=2", FAULT_PAUSE_SAVE=2)
    wait_for(tmp_path / "marker", proc)
    kill(proc)
    assert list(run.glob(".last.pt.*.tmp"))  # the complete but unrenamed new file
    ckpt = read_model_file(run / "last.pt")  # the previous one, intact
    assert (ckpt["epoch"], ckpt["batch"]) == (0, 2) and 4 - ckpt["step"] <= 2
    with caplog.at_level(logging.INFO, logger="resnext.training.train"):
        resume(run)
    assert f"resumed {run / 'last.pt'} at epoch 0, batch 2" in caplog.messages
    assert not list(run.glob(".*.tmp"))
    assert_weights(run, straight)


def test_sigkill_at_random_moments_still_ends_with_the_same_weights(tmp_path, straight):
    run, rng, steps = tmp_path / "run", random.Random(7), [0]
    for _ in range(2):
        proc = start(tmp_path, run, "--resume", "auto", "--set", "checkpoint_steps=1",
                     FAULT_STEP_DELAY=0.1)  # fmt: skip
        wait_for(run / "last.pt", proc, since=mtime(run / "last.pt"))  # this process's first
        time.sleep(rng.uniform(0, 0.4))
        code, err = kill(proc)
        assert code in (0, -signal.SIGKILL), err[-2000:]  # 0: it finished first
        steps.append(read_model_file(run / "last.pt")["step"])
    assert steps == sorted(steps) and steps[1] < 8  # progress kept; the first kill was mid-run
    resume(run)
    assert_weights(run, straight)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit(tmp_path, straight, signum, status):
    run = tmp_path / "run"
    proc = start(tmp_path, run, FAULT_PAUSE_STEP=3, FAULT_NAP=1.5)
    wait_for(tmp_path / "marker", proc)
    code, err = kill(proc, signum)
    line = err.strip().splitlines()[-1]
    assert code == status, err[-2000:]
    name = signal.Signals(signum).name
    assert line.startswith(f"resnext: stopped by {name} during epoch 1, step 3/4; saved ")
    ckpt = read_model_file(run / "last.pt")  # the step the signal interrupted was finished
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 3, 3)
    if signum == signal.SIGTERM:
        resume(run)
        assert_weights(run, straight)


def test_sigterm_to_the_process_group_with_loader_workers(tmp_path):
    """As Ctrl-C or Slurm do, every process gets the signal: the DataLoader workers leave it to
    the main process, which finishes its step and saves."""
    write_image_folder(tmp_path / "data", ("cat", "dog"), 8, splits=("train",))
    write_image_folder(tmp_path / "data", ("cat", "dog"), 2, splits=("val",))
    run = tmp_path / "run"
    args = ["--dataset", "folder", "--data", str(tmp_path / "data"), "--batch-size", "4",
            "--set", "in_memory=no", "--set", "workers=2", "--set", "augment=inception",
            "--set", "train_size=32", "--set", "eval_resize=32", "--set", "eval_crop=32",
            "--set", "mean=0.5,0.5,0.5", "--set", "std=0.25,0.25,0.25"]  # fmt: skip
    proc = start(tmp_path, run, *args, FAULT_PAUSE_STEP=3, FAULT_NAP=1.5)
    wait_for(tmp_path / "marker", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    code, err = kill(proc, 0)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("resnext: stopped by SIGTERM during epoch 1, step 3/4")
    )
    assert read_model_file(run / "last.pt")["step"] == 3


TINY = {"epochs": 1, "train_limit": 32, "val_limit": 16}


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_run, capsys):
    run = tiny_run
    before = read_model_file(run / "last.pt")
    # lr 1e30: the first step blows the weights up, the second loss is NaN.
    assert main(["train", "--resume", str(run), "--epochs", "2", "--set", "lr=1e30"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "resnext: error: non-finite loss (nan) at step 4 (epoch 2)" in err
    assert f"last good checkpoint: {run / 'last.pt'} (step 2)" in err
    after = read_model_file(run / "last.pt")
    assert after["step"] == 2 and all(
        torch.equal(after["model"][k], v) for k, v in before["model"].items()
    )


def test_a_failed_checkpoint_write_keeps_the_previous_one(tiny_run, capsys):
    """A file size limit makes the kernel refuse the write, as a full disk does."""
    run = tiny_run
    before = read_model_file(run / "last.pt")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, limits[1]))
    try:
        code = main(["train", "--resume", str(run), "--epochs", "2"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"resnext: error: cannot write checkpoint {run / 'last.pt'} (")
    after = read_model_file(run / "last.pt")
    assert after["epoch"] == 1 and torch.equal(
        after["model"]["fc.weight"], before["model"]["fc.weight"]
    )
    assert not list(run.glob(".*.tmp"))


def _with_an_infinite_image(monkeypatch, index: int) -> None:
    """Training images as floats with one +inf pixel: every batch holding it has a NaN loss."""
    module = importlib.import_module("resnext.training.inputs")
    real = module.load_dataset

    def load(name, root, split, *args):
        data = real(name, root, split, *args)
        if split == "train":
            data = data.subset(TINY["train_limit"])  # the run's own subset() keeps it
            data = data.replace(images=data.images.float() / 255)
            data.images[index, 0, 3, 3] = float("inf")
        return data

    monkeypatch.setattr(module, "load_dataset", load)


def test_skip_nonfinite_skips_and_counts_the_steps(tmp_path, monkeypatch):
    _with_an_infinite_image(monkeypatch, 5)
    cfg = resolve_config("tiny", {**TINY, "epochs": 2, "skip_nonfinite": True})
    result = train(cfg, tmp_path / "run")
    assert result["skipped_steps"] == 2  # one batch per epoch holds the image
    ckpt = read_model_file(tmp_path / "run" / "last.pt")
    assert ckpt["skipped_steps"] == 2 and ckpt["step"] == 4
    # Weights and BN statistics stayed finite: the skipped forward passes left no trace.
    assert all(v.isfinite().all() for v in ckpt["model"].values() if v.is_floating_point())
    assert math.isfinite(result["val_loss"]) and math.isfinite(result["train_loss"])
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at step \d \(epoch 1\)"):
        train(dataclasses.replace(cfg, skip_nonfinite=False), tmp_path / "stopped")


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "lr": 0.1}\n{"epoch": 2, "lr": 0.1}\n{"epoch": 3, "l')
    keep_metrics(path, 2)
    assert path.read_text() == '{"epoch": 1, "lr": 0.1}\n{"epoch": 2, "lr": 0.1}\n'


# `resnext train` whose per-image transform fails on the 31 px image (not a bad file: a bug).
FAILING_TRANSFORM = """
import sys
import resnext.data.batches as batches
from resnext.cli import main

real = batches.train_transform

def train_transform(*args, **kwargs):
    inner = real(*args, **kwargs)
    def transform(image):
        if image.size == (31, 31):
            raise RuntimeError("the transform broke")
        return inner(image)
    return transform

batches.train_transform = train_transform
sys.exit(main(sys.argv[1:]))
"""
# A folder of 32 px pictures read per file by two loader workers, crop 32 from 4 px padding.
FOLDER = ["--recipe", "tiny", "--dataset", "folder", "--batch-size", "4", "--epochs", "1",
          "--set", "workers=2", "--set", "train_size=32", "--set", "pad=4",
          "--set", "eval_resize=32", "--set", "eval_crop=32", "--set", "mean=0.5,0.5,0.5",
          "--set", "std=0.25,0.25,0.25", "--set", "model=resnext11_2x8d"]  # fmt: skip


def _run(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """A command in its own process; the test fails (the process killed) if it hangs."""
    try:
        return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv[-4:])} did not end within {timeout} s (a hung loader?)")


def test_any_error_in_a_loader_worker_ends_the_process_naming_the_file(tmp_path):
    data = write_image_folder(tmp_path / "data", ("cat", "dog"), 4)
    odd = data / "train" / "dog" / "odd.png"
    digit_image(1, 7, size=31).save(odd)
    (tmp_path / "launch.py").write_text(FAILING_TRANSFORM)
    argv = [sys.executable, str(tmp_path / "launch.py"), "train", *FOLDER, "--data", str(data),
            "--set", "in_memory=no", "--out", str(tmp_path / "run")]  # fmt: skip
    done = _run(argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"resnext: error: cannot load {odd}: RuntimeError: the transform broke"


@pytest.mark.parametrize("in_memory", ["no", "auto"])
def test_an_image_too_small_for_the_crop_is_a_bad_image(tmp_path, in_memory, capsys, caplog):
    """A 1x1 PNG: read by loader workers (in_memory=no) or decoded into memory (auto)."""
    data = write_image_folder(tmp_path / "data", ("cat", "dog"), 4)
    tiny = data / "train" / "cat" / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    base = ["train", *FOLDER, "--data", str(data), "--set", f"in_memory={in_memory}",
            "--set", "max_bad_fraction=0.2"]  # 1 of 9 images  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="resnext.data.datasets"):
        assert main([*base, "--out", str(tmp_path / "run")]) == 0
    reason = "1x1 px, smaller than the 24 px the training crop needs"
    assert caplog.messages.count(f"skipping bad image {tiny}: {reason}") == 1
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["bad_images"] == 1
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "strict"), "--bad-images", "error"]) == 2
    err = capsys.readouterr().err
    assert err == f"resnext: error: bad image {tiny}: {reason} (bad_images=skip skips such files)\n"


def test_mixed_sizes_train_in_both_paths_brought_to_the_training_size(tmp_path, caplog):
    """Images of two sizes: both paths bring them to train_size as evaluation does, and say so."""
    data = write_image_folder(tmp_path / "data", ("cat", "dog"), 4)
    big = data / "train" / "dog" / "big.png"
    digit_image(1, 9, size=40).save(big)
    base = ["train", *FOLDER, "--data", str(data)]
    for mode, said in (("yes", "brought to 32x32 px"), ("no", "brought to 32 px")):
        out = tmp_path / mode
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main([*base, "--set", f"in_memory={mode}", "--out", str(out)]) == 0
        assert said in caplog.text, caplog.text[-3000:]
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
