"""`resnext bench`: images/s against torchvision's twin, interleaved in one process."""

from __future__ import annotations

import argparse
import json
from typing import get_args

from resnext.cli.common import DefaultsFormatter, UserError
from resnext.inference.bench import Mode
from resnext.models.blocks import Form
from resnext.models.zoo import get_spec
from resnext.training.config import Device, Precision


def cmd_bench(args: argparse.Namespace) -> None:
    """Time models against torchvision's, interleaved in one process."""
    from pathlib import Path

    from resnext.inference.bench import BenchConfig, markdown, run_row
    from resnext.training.distributed import resolve_device

    for flag in ("batch_size", "iters"):
        if getattr(args, flag) < 1:
            raise UserError(
                f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
            )
    if args.backend == "onnxruntime" and (args.mode != "infer" or args.precision != "fp32"):
        raise UserError("--backend onnxruntime runs fp32 inference only")
    device = str(resolve_device(args.device))
    rows = []
    for name in args.models.split(","):
        get_spec(name)  # unknown names fail before any timing
        cfg = BenchConfig(
            name, args.mode, args.batch_size, args.precision, args.layout, args.compile,
            args.form, args.input_size, args.warmup, args.iters, device, args.backend,
            args.merge_groups,
        )  # fmt: skip
        rows.append(run_row(cfg))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(markdown(rows), end="")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """bench."""
    p = sub.add_parser("bench", help="images/s against torchvision in the same process",
                       formatter_class=DefaultsFormatter)  # fmt: skip
    p.add_argument("--models", default="resnext50_32x4d", help="comma-separated names")
    p.add_argument("--mode", choices=get_args(Mode), default="infer", help="what is timed")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--precision", choices=get_args(Precision), default="fp32",
                   help="our model's precision (the reference runs fp32)")  # fmt: skip
    p.add_argument("--layout", choices=["nchw", "nhwc"], default="nhwc", help="memory layout")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile our model")  # fmt: skip
    p.add_argument("--form", choices=get_args(Form), default="c",
                   help="block form (a, b, c: the same function, section 3.2)")  # fmt: skip
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="inference engine (onnxruntime: fp32, needs the export extra)")  # fmt: skip
    p.add_argument("--merge-groups", action=argparse.BooleanOptionalAction, default=False,
                   help="run groups of fewer than 4 channels merged (what training does on the CPU)")  # fmt: skip
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side (default: 224 for ImageNet models, 32 for CIFAR)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--iters", type=int, default=10, help="timed steps of each model")
    p.add_argument("--device", choices=get_args(Device), default="auto",
                   help="auto: CUDA if there is a GPU, else the CPU")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object per row")
    p.add_argument("--out", metavar="FILE", help="also write the rows to FILE as JSON")
    p.set_defaults(func=cmd_bench)
