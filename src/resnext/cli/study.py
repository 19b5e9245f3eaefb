"""`resnext study`: the cardinality / width / depth grid, trained and summarised."""

from __future__ import annotations

import argparse
from typing import Any

from resnext.cli.cluster import add_launcher_arguments, cluster_options
from resnext.cli.common import DefaultsFormatter, UserError, int_list, log_to_stderr
from resnext.cli.training import add_data_arguments


def cmd_study(args: argparse.Namespace) -> None:
    """Train a cardinality study (one run per member and seed) and summarise it."""
    from resnext.study.plan import resolve_study
    from resnext.training.fields import parse_set
    from resnext.training.rundir import run_lock

    changes = {f: int_list(f, getattr(args, f)) for f in ("cardinalities", "widths", "depths")
               if getattr(args, f) is not None}  # fmt: skip
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds must be positive, got {args.seeds}")
        changes["seeds"] = args.seeds
    flags = {"dataset": args.dataset, "data": args.data, "epochs": args.epochs}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_set(args.set)
    study, cfg = resolve_study(args.out, args.template, args.recipe, changes, overrides)
    log_to_stderr(True)
    launch = None if args.report_only else cluster_options(args, study=True)
    # One process works in a study directory at a time; each run's own lock is taken inside.
    with run_lock(args.out, "study directory"):
        _study(args, study, cfg, launch)


def _study(args: argparse.Namespace, study: Any, cfg: Any, launch: Any) -> None:
    from resnext.study.grid import grid, run_study, write_plan
    from resnext.study.report import markdown, write_report

    if not args.report_only:
        print(f"study {args.template or study.template}: {study.seeds} seed(s), recipe "
              f"{study.recipe}, {cfg.epochs} epochs, {cfg.dataset} {cfg.data}".rstrip())  # fmt: skip
        print("| arm | model | C | d | group width | depth | params | MACs (M) | x base |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in grid(study, cfg):
            print(f"| {r['arm']} | {r['model']} | {r['cardinality']} | {r['d']} "
                  f"| {r['group_width']} | {r['depth']} | {r['params']:,} "
                  f"| {r['macs'] / 1e6:.1f} | {r['macs_ratio']:.2f} |", flush=True)  # fmt: skip
        if launch is None:
            run_study(study, cfg, args.out)
        else:
            from resnext.study.launch import submit_study

            if not submit_study(study, cfg, args.out, launch):
                return  # --no-wait: the jobs run on; --report-only collects them
    else:
        write_plan(study, cfg, args.out)  # a new study's plan; an existing one is kept
    print(markdown(write_report(args.out)), end="")
    print(f"results: {args.out}/results.md, results.json, study.png")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """study."""
    p = sub.add_parser("study", help="cardinality vs width vs depth at equal complexity",
                       formatter_class=DefaultsFormatter)  # fmt: skip
    p.add_argument("--template", help="preset (cifar, imagenet, cpu, table4-cpu) or C=1 model; "
                   "needed for a new study (default: the one saved in --out)")  # fmt: skip
    p.add_argument("--cardinalities", help="comma-separated C values (default: the preset's)")
    p.add_argument(
        "--widths", help="'wider instead' arm: comma-separated d at C=1 (default: the preset's)"
    )
    p.add_argument(
        "--depths",
        help="'deeper instead' arm: comma-separated depths at C=1 (default: the preset's)",
    )
    p.add_argument(
        "--seeds", type=int, help="runs per member, seeds 0..N-1 (default: the preset's)"
    )
    p.add_argument("--recipe", help="training recipe (default: the preset's)")
    add_data_arguments(p, "the preset's recipe's")
    p.add_argument("--out", required=True,
                   help="study directory; it remembers its grid (re-run to continue)")  # fmt: skip
    p.add_argument("--report-only", action="store_true", help="summarise the runs so far")
    add_launcher_arguments(p, study=True)
    p.set_defaults(func=cmd_study)
