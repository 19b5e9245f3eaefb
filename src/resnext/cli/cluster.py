"""The launcher flags that `resnext train` and `resnext study` share: in process, or submitit jobs."""

from __future__ import annotations

import argparse

from resnext.cli.common import UserError

_FLAGS = ("cluster", "nodes", "gpus", "tasks_per_node", "cpus_per_task", "timeout_min",
          "partition", "account", "max_parallel", "no_wait")  # fmt: skip


def add_launcher_arguments(p: argparse.ArgumentParser, study: bool) -> None:
    """--launcher and the job's size; a study sizes each run, a training its one job."""
    g = p.add_argument_group("launcher")
    g.add_argument("--launcher", choices=["inline", "submitit"], default="inline",
                   help="inline: train in this process (default; torchrun works as well); "
                        "submitit: submit jobs (the 'cluster' extra)")  # fmt: skip
    g.add_argument("--cluster", choices=["slurm", "local"],
                   help="submitit's executor: sbatch jobs (default) or local processes")  # fmt: skip
    if study:
        g.add_argument("--nodes-per-run", dest="nodes", type=int, help="nodes of each run's job")
        g.add_argument("--gpus-per-run", dest="gpus", type=int,
                       help="GPUs of each run, split evenly over its nodes (one task per GPU)")  # fmt: skip
        g.add_argument("--max-parallel", type=int, help="jobs running at once (array throttle)")
    else:
        g.add_argument("--nodes", type=int, help="nodes of the job")
        g.add_argument("--gpus-per-node", dest="gpus", type=int, help="GPUs (= tasks) per node")
        g.add_argument("--tasks-per-node", type=int, help="processes per node (default: GPUs)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs of each task (data loading workers)")
    g.add_argument("--timeout-min", type=int,
                   help="job time limit in minutes (default 1440); a timed-out job requeues "
                        "and continues from last.pt")  # fmt: skip
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--no-wait", action="store_true",
                   help="return once submitted (a study collects with --report-only)")  # fmt: skip


def cluster_options(args: argparse.Namespace, study: bool):  # -> ClusterOptions | None
    """The job options, checked before any work; None for the in-process launcher."""
    given = [f for f in _FLAGS if getattr(args, f, None) not in (None, False)]
    if args.launcher == "inline":
        if given:
            names = {"nodes": "--nodes-per-run" if study else "--nodes",
                     "gpus": "--gpus-per-run" if study else "--gpus-per-node"}  # fmt: skip
            flag = names.get(given[0], "--" + given[0].replace("_", "-"))
            raise UserError(f"{flag} needs --launcher submitit")
        return None
    from resnext.training.launcher import ClusterOptions, check_cluster

    nodes, gpus = args.nodes or 1, args.gpus or 0
    if study and gpus % nodes:
        raise UserError(f"--gpus-per-run {gpus} does not split evenly over {nodes} nodes")
    opts = ClusterOptions(
        cluster=args.cluster or "slurm",
        nodes=nodes,
        gpus_per_node=gpus // nodes if study else gpus,
        tasks_per_node=getattr(args, "tasks_per_node", None) or 0,
        cpus_per_task=args.cpus_per_task or 0,
        timeout_min=24 * 60 if args.timeout_min is None else args.timeout_min,
        partition=args.partition or "",
        account=args.account or "",
        max_parallel=getattr(args, "max_parallel", None) or 0,
        wait=not args.no_wait,
    )
    check_cluster(opts)
    return opts
