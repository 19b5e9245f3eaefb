"""The `resnext` command: thin orchestration of the library. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from resnext.allocator import allocator_tuning_wanted, tune_allocator
from resnext.cli import bench, files, models, pack, study, training, weights
from resnext.cli.common import Parser, UserError
from resnext.errors import one_line
from resnext.extras import MissingExtra

__all__ = ["UserError", "build_parser", "main"]


DESCRIPTION = """\
ResNeXt (Xie et al., CVPR 2017): build any member of the family, train it with the paper's
recipes, fine-tune pretrained weights on your images, reproduce the cardinality study, and
export it. Every command that takes a model file reads the same kinds: a run's last.pt or
best.pt, .safetensors, and torchvision / timm / pycls weight files."""

EPILOG = """\
examples:
  resnext train --recipe digits --out runs/digits        train on real digits (CPU, ~1 min)
  resnext train --recipe cifar --dataset folder --data DIR --out runs/c10
  resnext train --out runs/c10 --resume auto             continue where it stopped
  resnext evaluate --checkpoint runs/c10/best.pt --dataset folder --data DIR
  resnext predict --checkpoint runs/c10/best.pt photo.jpg
  resnext info resnext50_32x4d                           params and multiply-adds
  resnext study --template cpu --dataset folder --data DIR --out runs/study
  resnext train --recipe imagenet --dataset wds --data DIR --out runs/in1k
                                                         ImageNet as timm's imagenet-1k-wds
  resnext pack --dataset parquet --data DIR --format parquet --out NEW
                                                         hub parquet to one read per image
  torchrun --nproc_per_node=8 -m resnext.cli train --recipe imagenet --data DIR --out runs/in1k

`resnext COMMAND --help` lists a command's options and their defaults. Exit status: 0 done,
2 a mistake in the arguments or input files (one line, nothing written), 1 a failed run,
130/143 stopped by Ctrl-C/SIGTERM after saving."""


def build_parser() -> Parser:
    parser = Parser(
        prog="resnext",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND"
    )
    for group in (models, training, study, files, bench, weights, pack):
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `resnext` console script.

    Exit status: 0 done; 2 a mistake in the command line or its inputs (arguments, data,
    checkpoint files); 1 the run failed (non-finite loss, an I/O error such as a full disk);
    128 + signal (143 SIGTERM, 130 SIGINT) stopped on request after saving a checkpoint.
    """
    from resnext.interrupt import interrupt_raises
    from resnext.training.engine import NonFiniteLoss
    from resnext.training.stopping import TrainingStopped

    interrupt_raises()
    continuing = "continue with --resume"
    try:
        args = build_parser().parse_args(argv)
        if args.command == "study":  # a study continues by running it again
            continuing = f"continue by running resnext study --out {args.out} again"
        if getattr(args, "input_size", None) is not None and args.input_size < 1:
            raise UserError(f"--input-size must be positive, got {args.input_size}")
        if allocator_tuning_wanted():  # up to 2x faster eager CPU steps (docs/performance.md)
            tune_allocator()
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except TrainingStopped as e:
        print(f"resnext: {e}; {continuing}", file=sys.stderr)
        return e.exit_status
    except BrokenPipeError:  # `resnext predict ... | head -1`: the reader has gone; end quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a program killed by a closed pipe
    except (UserError, ValueError, MissingExtra, NonFiniteLoss, OSError) as e:
        if os.environ.get("RESNEXT_DEBUG"):
            raise
        print(f"resnext: error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, (UserError, ValueError, MissingExtra)) else 1
    except KeyboardInterrupt:
        print("resnext: interrupted", file=sys.stderr)
        return 130
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again
    (the recipe of Python's `signal` documentation for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests, IDEs)
        pass
