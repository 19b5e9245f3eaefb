"""`resnext study`: the cardinality / width / depth grid, trained and summarised."""

from __future__ import annotations

import argparse

from resnext.cli.cluster import add_launcher_arguments, cluster_options
from resnext.cli.common import UserError, int_list, log_to_stderr


def cmd_study(args: argparse.Namespace) -> None:
    """Train a cardinality study (one run per member and seed) and summarise it (issue 4)."""
    import dataclasses

    from resnext.study.grid import PRESETS, StudyConfig, grid, run_config, run_study, write_plan
    from resnext.study.report import markdown, write_report
    from resnext.training.config import parse_set

    if args.template in PRESETS:
        study = PRESETS[args.template]
    elif args.recipe is None:
        raise UserError(
            f"--template {args.template!r} is no preset {sorted(PRESETS)}: give --recipe"
        )
    else:
        study = StudyConfig(args.template, (1, 2, 4, 8), args.recipe)
    changes = {f: int_list(f, getattr(args, f)) for f in ("cardinalities", "widths", "depths")
               if getattr(args, f) is not None}  # fmt: skip
    changes |= {"recipe": args.recipe} if args.recipe else {}
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds must be positive, got {args.seeds}")
        changes["seeds"] = args.seeds
    study = dataclasses.replace(study, **changes)
    flags = {"dataset": args.dataset, "data": args.data, "epochs": args.epochs}
    cfg = run_config(study, {k: v for k, v in flags.items() if v is not None} | parse_set(args.set))
    log_to_stderr(True)
    launch = None if args.report_only else cluster_options(args, study=True)
    if not args.report_only:
        print(f"study {args.template}: {study.seeds} seed(s), recipe {study.recipe}, "
              f"{cfg.epochs} epochs, {cfg.dataset} {cfg.data}".rstrip())  # fmt: skip
        print("| arm | model | C | d | group width | depth | params | MACs (M) |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in grid(study, cfg):
            print(f"| {r['arm']} | {r['model']} | {r['cardinality']} | {r['d']} "
                  f"| {r['group_width']} | {r['depth']} | {r['params']:,} "
                  f"| {r['macs'] / 1e6:.1f} |", flush=True)  # fmt: skip
        if launch is None:
            run_study(study, cfg, args.out)
        else:
            from resnext.study.launch import submit_study

            if not submit_study(study, cfg, args.out, launch):
                return  # --no-wait: the jobs run on; --report-only collects them
    else:
        write_plan(study, cfg, args.out)
    print(markdown(write_report(args.out)), end="")
    print(f"results: {args.out}/results.md, results.json, study.png")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """study."""
    p = sub.add_parser("study", help="cardinality vs width vs depth at equal complexity")
    p.add_argument("--template", required=True, help="preset (cifar, imagenet, cpu) or C=1 model")
    p.add_argument("--cardinalities", help="comma-separated C values (default: the preset's)")
    p.add_argument("--widths", help="'wider instead' arm: comma-separated d at C=1")
    p.add_argument("--depths", help="'deeper instead' arm: comma-separated depths at C=1")
    p.add_argument("--seeds", type=int, help="runs per member (seeds 0..N-1)")
    p.add_argument("--recipe", help="training recipe (default: the preset's)")
    p.add_argument("--dataset", choices=["folder", "cifar10", "cifar100", "digits"])
    p.add_argument("--data", help="dataset path")
    p.add_argument("--out", required=True, help="study directory (re-run to continue)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field for every run")  # fmt: skip
    p.add_argument("--report-only", action="store_true", help="summarise the runs so far")
    add_launcher_arguments(p, study=True)
    p.set_defaults(func=cmd_study)
