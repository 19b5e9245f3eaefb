"""`resnext bench`: images/s against torchvision's twin, interleaved in one process."""

from __future__ import annotations

import argparse
import json

import torch

from resnext.cli.common import UserError
from resnext.models.zoo import get_spec


def cmd_bench(args: argparse.Namespace) -> None:
    """Time models against torchvision's, interleaved in one process (issue 6)."""
    from pathlib import Path

    from resnext.inference.bench import BenchConfig, markdown, run_row

    for flag in ("batch_size", "iters"):
        if getattr(args, flag) < 1:
            raise UserError(
                f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
            )
    if args.backend == "onnxruntime" and (args.mode != "infer" or args.precision != "fp32"):
        raise UserError("--backend onnxruntime runs fp32 inference only")
    rows = []
    for name in args.models.split(","):
        get_spec(name)  # unknown names fail before any timing
        cfg = BenchConfig(
            name, args.mode, args.batch_size, args.precision, args.layout, args.compile,
            args.form, args.input_size, args.warmup, args.iters, args.device, args.backend,
            args.merge_groups,
        )  # fmt: skip
        rows.append(run_row(cfg))
    print(markdown(rows), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """bench."""
    p = sub.add_parser("bench", help="images/s against torchvision in the same process")
    p.add_argument("--models", default="resnext50_32x4d", help="comma-separated names")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--layout", choices=["nchw", "nhwc"], default="nhwc")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--form", choices=["a", "b", "c"], default="c")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="inference engine (onnxruntime: fp32, needs the export extra)")  # fmt: skip
    p.add_argument("--merge-groups", action=argparse.BooleanOptionalAction, default=False,
                   help="run groups of fewer than 4 channels merged (what training does on the CPU)")  # fmt: skip
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    p.set_defaults(func=cmd_bench)
