"""`resnext train` and `resnext plot`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import get_args

from resnext.cli.cluster import add_launcher_arguments, cluster_options
from resnext.cli.common import DefaultsFormatter, UserError, log_to_stderr
from resnext.training.config import RECIPES, BadImages, Dataset, TrainConfig


def cmd_train(args: argparse.Namespace) -> None:
    """Train a recipe; under `torchrun` the same command trains on many processes."""
    from pathlib import Path

    from resnext.training.fields import parse_set
    from resnext.training.finetune import finetune_config
    from resnext.training.rundir import claim, resume_path, run_lock
    from resnext.training.train import resume_config, train

    flags = {"model": args.model, "dataset": args.dataset, "data": args.data, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}  # fmt: skip
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides |= {"deterministic": True} if args.deterministic else {}
    overrides |= {"bad_images": args.bad_images} if args.bad_images else {}
    overrides |= parse_set(args.set)
    overrides |= {"init": args.init} if args.init else {}
    if overrides.get("init") and args.resume:
        raise UserError(
            "--init starts a new run from pretrained weights and --resume continues a run: "
            "give one of them (a fine-tuning run resumes with --resume alone)"
        )
    if args.out is None and args.resume in (None, "auto"):
        raise UserError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.overwrite and args.resume:
        raise UserError("--overwrite starts the run again; --resume continues it: give one")
    if args.out and args.resume not in (None, "auto"):
        resume_path(args.resume, Path(args.out))  # one that does not exist is named first
        run = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        if run.resolve() != Path(args.out).resolve():
            raise UserError(
                f"--resume {args.resume} and --out {args.out} name different run directories; "
                "a run continues in its own directory (give one of them)"
            )
    out = Path(args.out or args.resume)
    launch = cluster_options(args, study=False)
    rank0 = os.environ.get("RANK", "0") == "0"
    log_to_stderr(rank0)
    cfg = resume_config(args.resume, out, overrides) if args.resume else None
    if cfg is not None and args.recipe not in (None, cfg.recipe):
        raise UserError(
            f"{out} was started with --recipe {cfg.recipe}, not {args.recipe}: leave --recipe "
            "out to continue it, or start it again with --overwrite"
        )
    cfg = cfg or finetune_config(args.recipe or "digits", overrides)
    # The lock (rank 0's) before claim: --overwrite must never delete a run another process
    # trains. A job's own process takes it again, so it is held here only until submission.
    with run_lock(out):
        if rank0:
            claim(out, args.resume, args.overwrite)  # before a job is submitted, too
        if launch is None:
            result = train(cfg, out, args.resume, args.overwrite)
    if launch is not None:
        from resnext.training.launcher import submit_train

        result = submit_train(cfg, out, args.resume, launch)
        if result is None:
            return  # --no-wait
    if not rank0:
        return
    if result.get("already_finished"):
        print(f"{out} is already finished ({result['already_finished']} epochs); "
              "nothing to do (a larger --epochs continues it)")  # fmt: skip
        return
    if result.get("val_split") == "none":
        print(f"trained without a held-out split (val_split=none): top-1 error "
              f"{result['train_top1_error']:.2f}% on the last epoch's training batches")  # fmt: skip
        print(f"run directory: {out}")
        print(f"plot: {out / 'errors.png'}")
        return
    err, split = result["val_top1_error"], result.get("val_split", "held-out")
    top5 = result.get("val_top5_error")  # None below 5 classes: every label is in the top 5
    top5 = f"top-5 error {top5:.2f}%, " if top5 is not None else ""
    print(f"{split} accuracy {100 - err:.2f}% (top-1 error {err:.2f}%, {top5}"
          f"on the {split} split)")  # fmt: skip
    print(f"run directory: {out}")
    print(f"plot: {out / 'errors.png'}")


def cmd_plot(args: argparse.Namespace) -> None:
    """Draw a run's training and validation error against epochs."""
    from resnext.training.plot import plot_run

    print(plot_run(args.run_dir))


def add_data_arguments(p: argparse.ArgumentParser, defaults: str) -> None:
    """--dataset, --data, --epochs, --set: the same meaning in train and study."""
    p.add_argument("--dataset", choices=get_args(Dataset), help=f"data set (default: {defaults})")
    p.add_argument("--data", help="data set path, stored absolute (default: none)")
    p.add_argument("--epochs", type=int, help=f"epochs to train (default: {defaults})")
    keys = ", ".join(f.name for f in dataclasses.fields(TrainConfig) if f.name != "recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field (a run's config.json holds them all); "
                        f"repeatable. Keys: {keys}")  # fmt: skip


def add_commands(sub: argparse._SubParsersAction) -> None:
    """train, plot."""
    p = sub.add_parser("train", help=f"train with a recipe ({', '.join(RECIPES)})",
                       formatter_class=DefaultsFormatter)  # fmt: skip
    p.add_argument("--recipe", help=f"named defaults: {', '.join(RECIPES)} (default: digits; "
                   "a resumed run keeps its own)")  # fmt: skip
    add_data_arguments(p, "the recipe's")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--out", help="run directory (one holding a run needs --resume or --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (its checkpoints and metrics are deleted)")  # fmt: skip
    p.add_argument("--batch-size", type=int,
                   help="global batch per optimizer step (default: the recipe's)")  # fmt: skip
    p.add_argument(
        "--lr", type=float, help="learning rate at the recipe's lr_batch (default: the recipe's)"
    )
    p.add_argument("--init", metavar="SOURCE",
                   help="fine-tune: start from these weights (a model file, URL, torchvision, "
                        "torchvision:TAG, timm:NAME.TAG); a new classifier if the classes differ")  # fmt: skip
    p.add_argument("--seed", type=int, help="random seed (default: the recipe's, 0)")
    p.add_argument("--deterministic", action="store_true", help="reproducible kernels")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue a run from its last.pt; auto: if --out holds one, else start")  # fmt: skip
    p.add_argument("--bad-images", choices=get_args(BadImages),
                   help="bad image files: skip each with a warning, or stop at the first "
                        "(default: the recipe's, skip)")  # fmt: skip
    add_launcher_arguments(p, study=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="training and validation error against epochs (PNG)",
                       formatter_class=DefaultsFormatter)  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_plot)
