"""A run directory is owned and survives every death: a run killed before its first checkpoint
restarts from its config.json, one process works in a run (or study) directory at a time, a
fine-tuning run trains at its weights' size, Ctrl-C at start-up is one line, and the messages
on these roads say what is true.

Lock holders are real processes (a training paused inside its first step), so the pid named
and the lock's death with its process are the kernel's, not a mock's.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import resnext
from resnext.cli import main
from resnext.cpus import default_workers
from resnext.data.preprocessing import Preprocessing
from resnext.files.model_file import read_model_file, save_model_file
from resnext.training.config import resolve_config, save_config
from resnext.training.finetune import finetune_config

from conftest import write_image_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SRC = str(Path(resnext.__file__).parents[1])
TINY = ["--recipe", "tiny", "--set", "train_limit=32", "--set", "val_limit=16"]

# `resnext ARGS` whose first training step writes MARKER and sleeps: a process that holds its
# run (or study) directory for as long as the test needs.
PAUSED = """
import os, sys, time
from pathlib import Path
import resnext.training.engine
from resnext.cli import main

real = resnext.training.engine.train_step

def train_step(*args, **kwargs):
    Path(os.environ["MARKER"]).write_text("paused")
    time.sleep(600)
    return real(*args, **kwargs)

resnext.training.engine.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def paused(tmp: Path, *argv: str) -> subprocess.Popen:
    """A `resnext` process paused in its first training step (holding its directory)."""
    (tmp / "paused.py").write_text(PAUSED)
    marker = tmp / "marker"
    marker.unlink(missing_ok=True)
    env = ENV | {"MARKER": str(marker), "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, str(tmp / "paused.py"), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the holder ended ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the holder never reached its first step")
        time.sleep(0.02)
    return proc


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# 1. Death before the first checkpoint.


def _died_before_a_checkpoint(run: Path, **fields) -> dict:
    """What a run killed in its first epoch leaves: config.json and an empty metrics.jsonl."""
    cfg = resolve_config("tiny", {"train_limit": 32, "val_limit": 16, "epochs": 1, **fields})
    run.mkdir(parents=True)
    save_config(cfg, run / "config.json")
    (run / "metrics.jsonl").write_text("")
    return cfg.to_dict()


@pytest.mark.parametrize("how", ["auto", "dir"])
def test_a_run_without_a_checkpoint_restarts_from_its_config_json(tmp_path, how):
    run = tmp_path / "run"
    saved = _died_before_a_checkpoint(run, lr=0.05, seed=3, label_smoothing=0.1)
    argv = ["train", "--out", str(run), "--resume", "auto"] if how == "auto" else [
        "train", "--resume", str(run)]  # fmt: skip
    assert main(argv) == 0
    # Not the default (digits) recipe: the saved config, every override kept.
    assert json.loads((run / "config.json").read_text()) == saved
    assert read_model_file(run / "last.pt")["config"] == saved
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]


def test_overrides_apply_on_top_of_the_saved_config(tmp_path, capsys):
    run = tmp_path / "run"
    saved = _died_before_a_checkpoint(run, lr=0.05, seed=3)
    assert main(["train", "--out", str(run), "--resume", "auto", "--epochs", "2"]) == 0
    assert json.loads((run / "config.json").read_text()) == {**saved, "epochs": 2}
    assert "top-5 error" in capsys.readouterr().out  # digits: 10 classes


def test_an_unreadable_config_json_is_refused_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"recipe": "tiny", "lr": 0.0')  # torn by a kill
    assert main(["train", "--out", str(run), "--resume", "auto"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(run / "config.json") in line and "--overwrite" in line
    assert not (run / "last.pt").exists()


def test_resume_of_a_directory_with_neither_file_names_what_is_missing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "last.pt" in line and "config.json" in line and str(run) in line


def test_a_full_disk_before_the_first_checkpoint_then_a_restart(tmp_path, capsys):
    """The kernel refuses the first last.pt (a file size limit, as a full disk would)."""
    run = tmp_path / "run"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, limits[1]))
    try:
        code = main(["train", *TINY, "--epochs", "1", "--set", "lr=0.03", "--out", str(run)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "cannot write checkpoint" in line
    assert "intact" not in line and "no checkpoint" in line  # there was none before
    assert not (run / "last.pt").exists()
    assert main(["train", "--out", str(run), "--resume", "auto"]) == 0
    assert read_model_file(run / "last.pt")["config"]["lr"] == 0.03


# 2. Fine-tuning trains at the weights' size.


def _small_model(path: Path, size: int) -> Path:
    model = resnext.create_model("resnext11_4x16d", num_classes=3)
    pre = Preprocessing(size, size, "bilinear", (0.5, 0.4, 0.3), (0.25,) * 3)
    save_model_file(path, {"model": model.state_dict(), "spec": model.spec.to_dict(),
                           "model_name": "resnext11_4x16d", "class_names": ["a", "b", "c"],
                           "preprocessing": pre.to_dict()})  # fmt: skip
    return path


@pytest.mark.parametrize("size", [16, 32, 48])
def test_fine_tuning_takes_the_training_size_from_the_weights(tmp_path, size):
    path = _small_model(tmp_path / "small.pt", size)
    cfg = finetune_config("finetune", {"init": str(path)})
    assert (cfg.train_size, cfg.eval_resize, cfg.eval_crop) == (size, size, size)
    given = finetune_config("finetune", {"init": str(path), "train_size": 2 * size})
    assert given.train_size == 2 * size  # --set wins


def test_fine_tuning_logs_its_sizes_first(tmp_path, caplog):
    data = write_image_folder(tmp_path / "images", size=32, per_class=2)
    path = _small_model(tmp_path / "small.pt", 32)
    argv = ["train", "--recipe", "finetune", "--init", str(path), "--dataset", "folder",
            "--data", str(data), "--epochs", "1", "--batch-size", "2", "--set", "workers=0",
            "--set", "warmup_epochs=0", "--out", str(tmp_path / "run")]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    lines = caplog.text.splitlines()
    first = next(i for i, x in enumerate(lines) if "trains at" in x)
    assert first <= 3 and "trains at 32 px" in lines[first], lines
    assert "evaluates at 32 px" in lines[first]
    assert read_model_file(tmp_path / "run" / "last.pt")["config"]["train_size"] == 32


# 3. One process per run (and study) directory.


def test_a_second_process_is_refused_and_the_lock_dies_with_the_first(tmp_path, capsys):
    run = tmp_path / "run"
    holder = paused(tmp_path, "train", *TINY, "--epochs", "1", "--out", str(run))
    try:
        for argv in (["--out", str(run), "--resume", "auto"], ["--resume", str(run)],
                     ["--out", str(run), "--overwrite", *TINY]):  # fmt: skip
            assert main(["train", *argv]) == 2
            line = one_error_line(capsys.readouterr().err)
            assert str(holder.pid) in line and str(run) in line
        assert (run / "config.json").is_file()  # --overwrite deleted nothing
    finally:
        holder.kill()  # SIGKILL: no handler runs, only the kernel frees the lock
        holder.communicate()
    assert main(["train", "--out", str(run), "--resume", "auto"]) == 0  # never a stale lock


def test_a_study_directory_takes_one_process(tmp_path, capsys):
    study = tmp_path / "study"
    argv = ["study", "--template", "cpu", "--dataset", "digits", "--epochs", "1",
            "--cardinalities", "1", "--seeds", "1", "--set", "train_limit=32", "--set", "batch_size=16",
            "--set", "val_limit=16", "--out", str(study)]  # fmt: skip
    holder = paused(tmp_path, *argv)
    try:
        assert main(["study", "--out", str(study)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(holder.pid) in line and str(study) in line
    finally:
        holder.kill()
        holder.communicate()


def test_only_rank_0_locks(tmp_path, monkeypatch):
    """Under torchrun every rank runs `train`: ranks > 0 must pass rank 0's lock."""
    from resnext.training.rundir import run_lock

    run = tmp_path / "run"
    with run_lock(run):
        monkeypatch.setenv("RANK", "1")
        with run_lock(run):  # would raise if rank 1 also took the lock
            pass
        monkeypatch.setenv("RANK", "0")
        with run_lock(run):  # the same process again (cmd_train, then train): re-entrant
            pass


# 7. timm sources without a network.


@pytest.mark.parametrize("offline", ["refused", "HF_HUB_OFFLINE"])
def test_timm_without_a_network_is_one_quick_line_naming_the_cache(tmp_path, monkeypatch, offline):
    """No network: a refused connection (nothing listens on 127.0.0.1:9), or HF_HUB_OFFLINE."""
    pytest.importorskip("timm")
    import huggingface_hub.constants

    from resnext.files.sources import SourceError, timm_file

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline != "refused")
    began = time.monotonic()
    with pytest.raises(SourceError) as e:
        timm_file("resnext50_32x4d.a1h_in1k")
    assert time.monotonic() - began < 5  # the hub's client alone retries for about 50 s
    assert str(cache / "models--timm--resnext50_32x4d.a1h_in1k") in str(e.value)
    assert "\n" not in str(e.value)


def test_weights_says_where_timm_downloads_go(capsys, monkeypatch, tmp_path):
    pytest.importorskip("timm")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hfcache"))
    assert main(["weights", "resnext50_32x4d"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "hfcache") in out and "Hugging Face" in out
    assert torch.hub.get_dir() in out


# 8. Messages that mislead.


def test_fewer_epochs_than_a_finished_step_run_names_the_epochs(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "3", "--set", "schedule=step", "--set", "milestones=2"]
    assert main([*argv, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "auto", "--epochs", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "has trained 3 epochs" in line and "milestones" not in line
    assert main(["train", "--out", str(run), "--resume", "auto"]) == 0
    out = capsys.readouterr()
    assert (out.out + out.err).count("already finished") == 1


def test_resume_of_a_missing_directory_says_so(tmp_path, capsys):
    gone = tmp_path / "gone"
    assert main(["train", "--resume", str(gone), "--out", str(tmp_path / "other")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{gone} does not exist" in line and "different run directories" not in line


def test_a_stopped_study_says_how_a_study_continues(tmp_path, capsys, monkeypatch):
    from resnext.training import train as train_module
    from resnext.training.stopping import TrainingStopped

    def stopped(cfg, out, resume=None, overwrite=False):
        raise TrainingStopped(signal.SIGINT, f"stopped by SIGINT after epoch 1; saved {out}")

    monkeypatch.setattr(train_module, "train", stopped)
    study = tmp_path / "study"
    argv = ["study", "--template", "cpu", "--dataset", "digits", "--cardinalities", "1",
            "--seeds", "1", "--out", str(study)]  # fmt: skip
    assert main(argv) == 130
    line = one_error_line(capsys.readouterr().err)
    assert f"resnext study --out {study}" in line and "--resume" not in line


def test_a_study_that_cannot_be_written_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = ["study", "--template", "cpu", "--dataset", "digits", "--out", str(blocker / "s")]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(blocker) in line and "Errno" not in line


# 9. Ctrl-C during start-up.


@pytest.mark.parametrize("command", ["module", "script"])
def test_ctrl_c_at_start_up_is_one_line_and_130(tmp_path, command):
    """SIGINT at several moments of the command's start-up (imports take seconds).

    The delays count from the moment a bare interpreter is up (`python -c "import re, sys"`,
    the console script's own first lines, measured here with a margin): before that, Python's
    own start-up (site, streams) receives the signal, before any code of this package can run.
    """
    if command == "script":
        script = Path(sys.executable).parent / "resnext"
        if not script.is_file():
            pytest.skip("no resnext console script next to this interpreter")
        cmd = [str(script)]
    else:
        cmd = [sys.executable, "-m", "resnext"]
    env = ENV | {"PYTHONPATH": SRC}
    bare = 0.0
    for _ in range(3):  # the slowest of three: one quick start would put a signal inside Python's
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", "import re, sys"], env=env, check=True)
        bare = max(bare, time.monotonic() - began)
    bare *= 1.5  # and a margin: the next start may be slower still on a loaded machine
    for delay in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0):
        argv = [*cmd, "train", *TINY, "--out", str(tmp_path / f"run{delay}")]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(bare + delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (delay, proc.returncode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (delay, err)


# 10. Small things.


def test_few_classes_report_no_top5_and_a_dropped_batch_is_counted(tmp_path, capsys, caplog):
    data = write_image_folder(tmp_path / "images", per_class=3, size=8)  # 9 images, 3 classes
    argv = ["train", "--recipe", "cifar", "--model", "resnext11_4x16d", "--dataset", "folder",
            "--data", str(data), "--epochs", "1", "--batch-size", "4", "--set", "workers=0",
            "--set", "train_size=8", "--set", "eval_resize=8", "--set", "eval_crop=8",
            "--set", "pad=1", "--out", str(tmp_path / "run")]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top-1 error" in out and "top-5" not in out
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["val_top5_error"] is None
    assert "2 steps/epoch" in caplog.text and "leaves out 1 image" in caplog.text


def test_the_finetune_recipe_asks_for_the_usable_cpus():
    assert resolve_config("finetune").workers == default_workers()


def test_safetensors_export_says_nothing_of_dynamic_shapes(tmp_path, capsys):
    path = _small_model(tmp_path / "m.pt", 32)
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(path), "--format", "safetensors", "--out",
                 str(out)]) == 0  # fmt: skip
    line = capsys.readouterr().out
    assert str(out) in line and "dynamic" not in line and "static" not in line
