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


def _accumulating_rank(rank: int, port: int, out: str) -> None:
    """One of two DDP ranks taking its half of a batch of 16 as two micro-batches."""
    import torch.distributed as dist

    from resnext.models.model import build_model
    from resnext.models.zoo import ModelSpec
    from resnext.training.config import resolve_config
    from resnext.training.engine import Trainee, train_step
    from resnext.training.optim import build_optimizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)  # fmt: skip
    cfg = resolve_config("tiny", {"batch_size": 16, "accum_steps": 2})
    torch.manual_seed(0)
    raw = build_model(ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, num_classes=5,
                                in_channels=1)).eval()  # fmt: skip
    ddp = torch.nn.parallel.DistributedDataParallel(raw)
    t = Trainee(ddp, raw, build_optimizer(raw, cfg), torch.amp.GradScaler("cpu", enabled=False),
                ddp=ddp)  # fmt: skip
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    for _ in range(2):
        train_step(t, x[8 * rank : 8 * rank + 8], y[8 * rank : 8 * rank + 8], cfg, None)
    torch.save(raw.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_accumulation_syncs_once_per_step_and_equals_one_process(tmp_path):
    """Two ranks x two micro-batches of 4 (gradients all-reduced on the last one only) give
    the weights of one process taking the batch of 16 as four micro-batches (BN frozen, so
    the batching does not change the function)."""
    import torch.multiprocessing as mp

    from resnext.models.model import build_model
    from resnext.models.zoo import ModelSpec
    from resnext.training.config import resolve_config
    from resnext.training.engine import Trainee, train_step
    from resnext.training.optim import build_optimizer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_accumulating_rank, args=(port, str(tmp_path)), nprocs=2,
                       start_method="spawn")  # fmt: skip
    cfg = resolve_config("tiny", {"batch_size": 16, "accum_steps": 4})
    torch.manual_seed(0)
    raw = build_model(ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, num_classes=5,
                                in_channels=1)).eval()  # fmt: skip
    t = Trainee(raw, raw, build_optimizer(raw, cfg), torch.amp.GradScaler("cpu", enabled=False))
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    for _ in range(2):
        train_step(t, x, y, cfg, None)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, want in raw.state_dict().items():
        for r, got in enumerate(ranks):
            assert torch.allclose(got[name], want, atol=1e-6), (r, name)


def test_the_step_line_shows_every_ranks_figures_as_the_epoch_line_does(tmp_path):
    """The last step's line sums over both ranks: its loss, error and rate are the epoch's."""
    import json
    import re

    out = _finish(_torchrun(["--standalone", "--nproc_per_node=2"], tmp_path / "ddp",
                            "--set", "log_steps=1"))  # fmt: skip
    steps = re.findall(r"step 2/2 loss (\S+) err (\S+) img/s (\S+)", out)
    epoch = json.loads(next(line for line in out.splitlines() if line.startswith('{"epoch"')))
    assert len(steps) == 1, out[-3000:]
    loss, err, rate = (float(v) for v in steps[0])
    assert loss == float(f"{epoch['train_loss']:.4g}")
    assert err == float(f"{epoch['train_top1_error']:.4g}")
    assert rate > 0.7 * epoch["images_per_second"]  # both ranks' images, not rank 0's half
