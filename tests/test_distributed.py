"""torchrun: two processes give the weights of one on the same global batch; two "nodes" run."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from resnext.files.model_file import read_model_file

ARGS = ["train", "--recipe", "tiny", "--epochs", "1", "--deterministic",
        "--set", "train_limit=32", "--set", "val_limit=16"]  # fmt: skip


def _torchrun(launcher: list[str], out, *extra: str) -> subprocess.Popen:
    """`resnext train` under torchrun (or alone for an empty `launcher`), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels, so float sums agree too
    cmd = [sys.executable, *(["-m", "torch.distributed.run", *launcher] if launcher else [])]
    cmd += ["-m", "resnext.cli", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[:3000]
    return out


def _assert_same_parameters(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == 2
    names = [n for n, p in a["model"].items() if p.dtype.is_floating_point and "running" not in n]
    assert len(names) > 10
    for n in names:  # BN running statistics are per rank by design; parameters must agree
        assert torch.allclose(a["model"][n], b["model"][n], rtol=1e-4, atol=1e-6), n


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """One process taking each global batch as two micro-batches (accum_steps=2): rank r's
    slice of a batch is micro-batch r, so BN sees the same images and the averaged gradient is
    the same as two ranks'."""
    out = tmp_path_factory.mktemp("single")
    _finish(_torchrun([], out, "--set", "accum_steps=2"))
    return read_model_file(out / "last.pt")


def test_two_processes_match_one_on_the_same_global_batch(tmp_path, single):
    out = _finish(_torchrun(["--standalone", "--nproc_per_node=2"], tmp_path / "ddp"))
    assert "2 process(es)" in out
    _assert_same_parameters(single, read_model_file(tmp_path / "ddp" / "last.pt"))


def test_two_nodes_on_localhost(tmp_path, single):
    """Two torchrun "nodes" of one process each meet at the rendezvous: one run of world size
    2, whose weights are those of one process on the same global batches."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=resnext-test"]  # fmt: skip
    nodes = [_torchrun(rdzv, tmp_path / "run") for _ in range(2)]
    logs = [_finish(node) for node in nodes]
    assert sum("2 process(es)" in log for log in logs) == 1  # rank 0 logs, the other does not
    ckpt = read_model_file(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["metrics"]["images_per_second"] > 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    _assert_same_parameters(single, ckpt)
