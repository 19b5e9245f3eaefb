"""Training runs as cluster jobs through submitit (`--launcher submitit`).

`--cluster slurm` submits with sbatch; `--cluster local` runs the very same jobs as local
processes through submitit's LocalExecutor (that is how the tests exercise this file). Inside a
job, submitit's TorchDistributedEnvironment exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT, so `train` joins its process group through distributed.setup exactly as under
torchrun: the trainer does not know which launcher started it.

A job that times out or is pre-empted receives submitit's signal (USR2): the trainer finishes its
step, saves last.pt and stops; submitit then calls `TrainJob.checkpoint`, whose submission
continues the run with resume="auto" when the requeued job starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from resnext.extras import MissingExtra, require
from resnext.training.config import TrainConfig

log = logging.getLogger("resnext.training.launcher")

Cluster = Literal["slurm", "local"]


def require_submitit() -> Any:
    """The submitit module, or MissingExtra: a one-line hint naming the 'cluster' extra."""
    return require("submitit", "cluster", "--launcher submitit")


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how big one job is. `tasks_per_node` 0 means one task per GPU (one on CPUs).

    `timeout_min` is the job's time limit; a job that reaches it is requeued and continues, so
    a limit shorter than the run only costs the restarts. `max_parallel` caps how many of a
    study's jobs run at once (SLURM's array throttle; waves of that size with `local`).
    """

    cluster: Cluster = "slurm"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    cpus_per_task: int = 0
    timeout_min: int = 24 * 60
    partition: str = ""
    account: str = ""
    max_parallel: int = 0
    wait: bool = True

    def __post_init__(self) -> None:
        if self.cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be slurm or local, got {self.cluster!r}")
        for name in ("nodes", "timeout_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "max_parallel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.cluster == "local" and self.nodes > 1:
            raise ValueError("--cluster local runs on this one machine: use one node")

    @property
    def tasks(self) -> int:
        """Processes per node: one per GPU, as torchrun's --nproc_per_node would start."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)


def check_cluster(opts: ClusterOptions) -> None:
    """Fail before any work if submitit or (for slurm) SLURM's commands are missing."""
    require_submitit()
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if opts.cluster == "slurm" and missing:
        raise ValueError(
            f"--cluster slurm needs SLURM's sbatch and srun on the PATH; {missing[0]} was not "
            "found (--cluster local runs the jobs on this machine)"
        )


def make_executor(opts: ClusterOptions, folder: Path, name: str) -> Any:
    """submitit's AutoExecutor for `opts`; its job scripts and logs go to `folder`."""
    check_cluster(opts)
    submitit = require_submitit()
    executor = submitit.AutoExecutor(folder=folder, cluster=opts.cluster)
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": opts.timeout_min,
        "nodes": opts.nodes,
        "tasks_per_node": opts.tasks,
        "gpus_per_node": opts.gpus_per_node,
    }
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.account:
        params["slurm_account"] = opts.account
    if opts.max_parallel:
        params["slurm_array_parallelism"] = opts.max_parallel
    executor.update_parameters(**params)
    return executor


class JobFailed(ChildProcessError):
    """A job ended without a result (it crashed or was killed): exit status 1."""


class TrainJob:
    """One training run as a submitit job; `checkpoint` is submitit's requeue hook.

    The job returns `{"status": "done", "metrics": ...}`; the trainer's own errors come back as
    `{"status": "error", ...}` so that the submitting command fails as `resnext train` would.
    """

    def __call__(self, cfg: TrainConfig, out: str, resume: str | None = None) -> dict[str, Any]:
        submitit = require_submitit()
        # All GPUs of a node stay visible to each task, as under torchrun: setup picks
        # cuda:LOCAL_RANK (exporting CUDA_VISIBLE_DEVICES per task would break that).
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )
        rank0 = os.environ["RANK"] == "0"
        logging.basicConfig(
            level=logging.INFO if rank0 else logging.WARNING,
            format="%(message)s",
            stream=sys.stderr,
        )
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            resume = "auto"  # SLURM requeued the job itself (pre-emption): continue, never redo
        return _as_result(lambda: _preemptible(lambda: self.train(cfg, Path(out), resume)))

    def train(self, cfg: TrainConfig, out: Path, resume: str | None) -> dict[str, Any]:
        """The normal train function (subclasses add bookkeeping around it)."""
        from resnext.training.train import train

        return train(cfg, out, resume)

    def checkpoint(self, cfg: TrainConfig, out: str, resume: str | None = None) -> Any:
        """submitit calls this on time-out or pre-emption: the requeued job continues the run."""
        submitit = require_submitit()
        return submitit.helpers.DelayedSubmission(self, cfg, out, "auto")


def _preemptible(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `run()` with submitit's pre-emption signal turned into the trainer's graceful stop.

    submitit's own handler checkpoints and requeues at once, losing the steps since the last
    last.pt; here the signal first asks the trainer to save at the end of its step, then hands
    over to submitit's handler (which exits on rank 0 and returns on the others).
    """
    from resnext.training.stopping import StopSignals, TrainingStopped

    usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
    requeue = signal.getsignal(usr)
    if not callable(requeue):  # not inside a submitit job: nothing to bridge
        return run()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        stop = signal.getsignal(signal.SIGTERM)
        if isinstance(getattr(stop, "__self__", None), StopSignals):
            stop(signal.SIGTERM, frame)  # type: ignore[operator]
        else:  # not inside the training loop: last.pt is as fresh as it gets
            requeue(signum, frame)

    signal.signal(usr, on_signal)
    try:
        return run()
    except TrainingStopped:
        if not received:
            raise
        log.warning("saved last.pt on %s: requeueing", signal.Signals(received[0]).name)
        requeue(received[0], None)
        return {"status": "requeued"}
    finally:
        signal.signal(usr, requeue)


def _as_result(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The trainer's outcome as data: its expected errors cross the process boundary intact."""
    from resnext.training.engine import NonFiniteLoss
    from resnext.training.stopping import TrainingStopped

    try:
        out = run()
    except TrainingStopped as e:
        return {"status": "error", "type": "TrainingStopped", "message": str(e), "signum": e.signum}
    except (ValueError, MissingExtra, NonFiniteLoss, OSError) as e:
        user = isinstance(e, (ValueError, MissingExtra))  # exit status 2, as in process
        kind = "ValueError" if user else type(e).__name__
        kind = kind if kind in ("ValueError", "NonFiniteLoss") else "OSError"
        return {"status": "error", "type": kind, "message": str(e)}
    return out if out.get("status") == "requeued" else {"status": "done", "metrics": out}


def raise_error(result: dict[str, Any], where: str = "") -> None:
    """Raise the error a job returned, as the same type the trainer raised in the job."""
    from resnext.training.engine import NonFiniteLoss
    from resnext.training.stopping import TrainingStopped

    message = f"{where}{result['message']}"
    if result["type"] == "TrainingStopped":
        raise TrainingStopped(result["signum"], message)
    kinds = {"ValueError": ValueError, "NonFiniteLoss": NonFiniteLoss, "OSError": OSError}
    raise kinds.get(result["type"], JobFailed)(message)


def job_result(job: Any) -> dict[str, Any]:
    """Wait for `job`; rank 0's result, or JobFailed naming the log to read."""
    submitit = require_submitit()
    try:
        result = job.results()[0]
    except submitit.core.utils.UncompletedJobError as e:
        lines = [x for x in str(e).strip().splitlines() if x.strip()]
        last = lines[-1].strip() if lines else type(e).__name__
        raise JobFailed(f"job {job.job_id} failed ({last}); log: {job.paths.stderr}") from None
    return result


def submit_train(
    cfg: TrainConfig, out: Path, resume: str | None, opts: ClusterOptions
) -> dict[str, Any] | None:
    """Train `cfg` into `out` as one job of nodes x tasks processes.

    Returns the final metrics once the job ends, or None at once with `opts.wait` False.
    """
    submitit = require_submitit()
    if cfg.tensorboard:
        from resnext.training.tensorboard import require_tensorboard

        require_tensorboard()
    executor = make_executor(opts, out / "submitit", f"resnext-{out.name}")
    with submitit.helpers.clean_env():  # a job submitted from a job must not inherit its ranks
        job = executor.submit(TrainJob(), cfg, str(out), resume)
    log.info("submitted job %s (%d node(s) x %d task(s), %s); logs: %s", job.job_id, opts.nodes,
             opts.tasks, opts.cluster, out / "submitit")  # fmt: skip
    if not opts.wait:
        return None
    result = job_result(job)
    if result["status"] == "error":
        raise_error(result)
    return result["metrics"]
