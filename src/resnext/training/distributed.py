"""torchrun integration: one code path for one process or many.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with WORLD_SIZE=1) nothing is
initialised and every helper is a no-op, so a plain `resnext train` needs no launcher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process sits: its rank among `world` processes and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Only the main process writes files and logs progress."""
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Read torchrun's environment and join the process group (NCCL on GPUs, Gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", **kwargs)
    return Context(rank, world, local_rank, dev)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device a setting names: "auto" (CUDA if there is one), "cpu", "cuda" (this process's
    GPU, cuda:LOCAL_RANK) or "cuda:N". The one check of a device string: train's device= and
    bench's --device; a GPU that is not there is a one-line error, not a CUDA traceback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but no CUDA device is available")
        index = local_rank if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", index)
    return dev


def teardown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over all processes (float64, so image counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process if `flag` is true on any (one process alone must not skip a step)."""
    if not dist.is_initialized():
        return flag
    return all_sum([float(flag)], device)[0] > 0


def barrier() -> None:
    """Wait for every process (after rank 0 wrote a file the others read)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's boolean, on every rank."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics), so all evaluate one model."""
    if dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b.data, 0)
