"""submitit jobs: a study and a training through `--cluster local` (submitit's LocalExecutor runs
the very jobs SLURM would), the requeue hook, a pre-empted and a killed job resuming."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from resnext.cli import main
from resnext.files.model_file import read_model_file
from resnext.training.config import resolve_config
from resnext.training.train import train

submitit = pytest.importorskip("submitit")
from resnext.training.launcher import (  # noqa: E402
    ClusterOptions,
    JobFailed,
    TrainJob,
    job_result,
    make_executor,
)

LOCAL = ["--launcher", "submitit", "--cluster", "local"]
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds tasks in /proc")


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_a_study_on_the_local_cluster_matches_the_in_process_one(tmp_path, capsys, caplog):
    argv = ["study", "--template", "resnext11_1x64d_p16", "--recipe", "tiny", "--dataset",
            "digits", "--cardinalities", "1,2", "--seeds", "1", "--epochs", "1", "--set",
            "deterministic=true", "--set", "train_limit=32", "--set", "val_limit=16"]  # fmt: skip
    caplog.set_level("INFO", logger="resnext.study.launch")
    assert main([*argv, "--out", str(tmp_path / "inline")]) == 0
    assert main([*argv, "--out", str(tmp_path / "jobs"), *LOCAL]) == 0
    assert "results:" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("inline", "jobs"))
    errors = [[(m["label"], m["final_error"]["mean"]) for m in r["members"]] for r in (a, b)]
    assert errors[0] == errors[1] and len(errors[0]) == 2
    for run in ("cardinality-1x64d-seed0", "cardinality-2x40d-seed0"):
        rows = [_epochs(tmp_path / d / run) for d in ("inline", "jobs")]
        assert [r["val_top1_error"] for r in rows[0]] == [r["val_top1_error"] for r in rows[1]]
        assert (tmp_path / "jobs" / run / "wall.json").is_file()
    assert any((tmp_path / "jobs" / "submitit").glob("*_log.err"))  # job logs in STUDY/submitit
    assert "[2/2]" in caplog.text and "done, val top-1 error" in caplog.text


def test_no_wait_returns_at_once_and_report_only_collects(tmp_path, capsys):
    argv = ["study", "--template", "resnext11_1x64d_p16", "--recipe", "tiny", "--cardinalities",
            "1", "--epochs", "1", "--set", "train_limit=16", "--set", "val_limit=16",
            "--out", str(tmp_path)]  # fmt: skip
    assert main([*argv, *LOCAL, "--no-wait"]) == 0
    assert "results:" not in capsys.readouterr().out  # submitted, not collected
    began = time.monotonic()
    while not list((tmp_path / "submitit").glob("*_result.pkl")):  # the job has ended
        assert time.monotonic() - began < 120, "the job did not finish"
        time.sleep(0.2)
    assert main([*argv, "--report-only"]) == 0
    assert "results:" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["unfinished"] == [] and results["members"][0]["seeds_finished"] == 1


def test_a_two_task_training_job_sets_up_torch_distributed_and_writes_metrics(
    tmp_path, capsys, monkeypatch
):
    """Two local tasks: submitit's environment becomes RANK/WORLD_SIZE as under torchrun."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on a small machine
    run = tmp_path / "run"
    argv = ["train", "--recipe", "tiny", "--set", "train_limit=32", "--set", "val_limit=16",
            "--epochs", "1", "--out", str(run), *LOCAL, "--tasks-per-node", "2"]  # fmt: skip
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert [r["epoch"] for r in _epochs(run)] == [1]
    log = "".join(p.read_text() for p in (run / "submitit").glob("*_0_log.err"))
    assert "2 process(es)" in log


def test_the_checkpoint_hook_continues_the_run_with_resume_auto(tmp_path, monkeypatch):
    cfg = resolve_config("tiny", {"epochs": 1, "train_limit": 32, "val_limit": 16})
    train(cfg, tmp_path / "run")
    longer = resolve_config("tiny", {"epochs": 2, "train_limit": 32, "val_limit": 16})
    job = TrainJob()
    delayed = job.checkpoint(longer, str(tmp_path / "run"), None)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is job and delayed.args == (longer, str(tmp_path / "run"), "auto")
    # Run the requeued submission as the job would, in a (local) job environment of one task.
    env = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "1", "SUBMITIT_LOCAL_NTASKS": "1",
           "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
           "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0", "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "x",
           "MASTER_PORT": "1"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = delayed.result()
    assert result["status"] == "done" and result["metrics"]["epoch"] == 2
    rows = _epochs(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    ckpt = read_model_file(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 4  # 2 + 2 steps: continued, not trained again


def _task_pids(controller: int) -> list[int]:
    """The job's task processes: children of submitit's local controller (Linux /proc)."""
    path = Path(f"/proc/{controller}/task/{controller}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def _after_first_epoch(job, run: Path, timeout: float = 120) -> list[int]:
    began = time.monotonic()
    while not (run / "last.pt").is_file() and time.monotonic() - began < timeout:
        assert job.state == "RUNNING", job.stderr()
        time.sleep(0.05)
    pids = _task_pids(job._process.pid)
    assert (run / "last.pt").is_file() and pids, "the job did not save its first epoch"
    return pids


def _local_job(cfg, run: Path):
    executor = make_executor(ClusterOptions(cluster="local"), run / "submitit", "test")
    return executor.submit(TrainJob(), cfg, str(run), None)


def _logs(run: Path) -> str:
    return "".join(p.read_text() for p in sorted((run / "submitit").glob("*_log.*")))


LONGER = {"epochs": 3, "train_limit": 64, "val_limit": 16, "deterministic": True}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The final checkpoint of LONGER uninterrupted, in this process on one thread: the jobs
    run on one thread too (OMP_NUM_THREADS), so that they use the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("straight") / "run"
        train(resolve_config("tiny", LONGER), run)
    finally:
        torch.set_num_threads(threads)
    return read_model_file(run / "last.pt")


def assert_same_weights(run: Path, straight: dict) -> None:
    """The interrupted run ends where the uninterrupted one did: every tensor, every step."""
    ckpt = read_model_file(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (straight["epoch"], straight["step"]) == (3, 12)
    assert ckpt["model"].keys() == straight["model"].keys()
    assert all(torch.equal(v, straight["model"][k]) for k, v in ckpt["model"].items())
    momenta = [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values()]
    expected = [s["momentum_buffer"] for s in straight["optimizer"]["state"].values()]
    assert len(momenta) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(momenta, expected))


@linux
def test_a_preempted_job_saves_requeues_and_resumes(tmp_path, straight, monkeypatch):
    """submitit's time-out / pre-emption signal: last.pt at the step's end, requeue, resume,
    and the run ends with the weights of an uninterrupted one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    job = _local_job(resolve_config("tiny", LONGER), run)
    for pid in _after_first_epoch(job, run):
        os.kill(pid, signal.SIGUSR2)  # what SLURM sends ahead of the time limit
    result = job_result(job)
    assert result["status"] == "done" and result["metrics"]["epoch"] == 3
    assert [r["epoch"] for r in _epochs(run)] == [1, 2, 3]
    logs = _logs(run)
    assert "requeueing" in logs and "resumed" in logs
    assert_same_weights(run, straight)


@linux
def test_a_killed_job_resubmitted_resumes_from_last_pt(tmp_path, capsys, straight, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    job = _local_job(resolve_config("tiny", LONGER), run)
    for pid in _after_first_epoch(job, run):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(JobFailed, match="failed"):
        job_result(job)
    done = len(_epochs(run))
    assert 1 <= done < 3
    argv = ["train", "--resume", "auto", "--out", str(run), *LOCAL]
    assert main(argv) == 0
    assert [r["epoch"] for r in _epochs(run)] == [1, 2, 3]
    assert f"resumed {run / 'last.pt'} at epoch {done}" in _logs(run)
    assert_same_weights(run, straight)


def _fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An sbatch that keeps the script it is given: what SLURM would be asked to run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\ncat "$1" >> {tmp_path}/scripts\necho "Submitted batch job 4242"\n'
    )
    sbatch.chmod(0o755)
    (bin_dir / "srun").symlink_to("/bin/true")  # submitit looks for it; the job script calls it
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "scripts"


def test_slurm_gets_one_array_of_the_runs_sized_as_asked(tmp_path, monkeypatch, capsys):
    scripts = _fake_sbatch(tmp_path, monkeypatch)
    argv = ["study", "--template", "resnext11_1x64d_p16", "--recipe", "tiny", "--cardinalities",
            "1,2", "--out", str(tmp_path / "s"), "--launcher", "submitit", "--cluster", "slurm",
            "--partition", "gpu", "--account", "proj", "--gpus-per-run", "4", "--nodes-per-run",
            "2", "--max-parallel", "1", "--timeout-min", "30", "--no-wait"]  # fmt: skip
    assert main(argv) == 0
    text = scripts.read_text()
    for line in ("--array=0-1%1", "--partition=gpu", "--account=proj", "--nodes=2",
                 "--gpus-per-node=2", "--ntasks-per-node=2", "--time=30", "--signal=USR2@90"):  # fmt: skip
        assert f"#SBATCH {line}" in text, line
    assert str(tmp_path / "s" / "submitit") in text  # the job logs live in STUDY/submitit


def test_a_multi_node_training_is_one_job_of_nodes_x_gpus_tasks(tmp_path, monkeypatch):
    scripts = _fake_sbatch(tmp_path, monkeypatch)
    argv = ["train", "--recipe", "tiny", "--out", str(tmp_path / "r"), "--launcher", "submitit",
            "--cluster", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--no-wait"]  # fmt: skip
    assert main(argv) == 0
    text = scripts.read_text()
    for line in ("--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8"):
        assert f"#SBATCH {line}" in text, line
    assert "--array" not in text


@pytest.mark.parametrize("command", ["train", "study"])
def test_slurm_without_sbatch_is_one_line_exit_2(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    args = ["--template", "cpu"] if command == "study" else []
    argv = [command, *args, "--out", str(tmp_path / "o"), "--launcher", "submitit"]
    assert main([*argv, "--cluster", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_missing_submitit_is_a_one_line_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    argv = ["train", "--out", str(tmp_path / "o"), *LOCAL]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'cluster' extra" in err and "resnext[cluster]" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "gpu"], "--partition needs --launcher submitit"),
        (["--gpus-per-node", "8"], "--gpus-per-node needs --launcher submitit"),
        ([*LOCAL, "--nodes", "2"], "one node"),
        ([*LOCAL, "--timeout-min", "0"], "timeout_min must be positive"),
    ],
)
def test_bad_launcher_flags_exit_2(args, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
