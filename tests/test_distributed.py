"""torchrun: two processes give the weights of one on the same global batch; two "nodes" run."""

import os
import socket
import subprocess
import sys

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


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[:3000]


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    """Rank r takes slice r of each global batch; one process with accum_steps=2 takes the same
    two slices as micro-batches, so BN sees the same images and the averaged gradient is equal."""
    ddp = _torchrun(["--standalone", "--nproc_per_node=2"], tmp_path / "ddp")
    single = _torchrun([], tmp_path / "single", "--set", "accum_steps=2")
    _finish(single)
    _finish(ddp)
    a, b = (read_model_file(tmp_path / d / "last.pt") for d in ("single", "ddp"))
    assert a["step"] == b["step"] == 2
    names = [n for n, p in a["model"].items() if p.dtype.is_floating_point and "running" not in n]
    for n in names:  # BN running statistics are per rank by design; parameters must agree
        assert torch.allclose(a["model"][n], b["model"][n], rtol=1e-4, atol=1e-6), n


def test_two_nodes_on_localhost(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=resnext-test"]  # fmt: skip
    nodes = [_torchrun(rdzv, tmp_path / "run") for _ in range(2)]
    for node in nodes:
        _finish(node)
    ckpt = read_model_file(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["metrics"]["images_per_second"] > 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
