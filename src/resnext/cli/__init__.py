"""The `resnext` command: thin orchestration of the library. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from resnext.allocator import allocator_tuning_wanted, tune_allocator
from resnext.cli import bench, files, models, study, training, weights
from resnext.cli.common import Parser, UserError

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="resnext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in (models, training, study, files, bench, weights):
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `resnext` console script.

    Exit status: 0 done; 2 a mistake in the command line or its inputs (arguments, data,
    checkpoint files); 1 the run failed (non-finite loss, an I/O error such as a full disk);
    128 + signal (143 SIGTERM, 130 SIGINT) stopped on request after saving a checkpoint.
    """
    from resnext.training.engine import NonFiniteLoss
    from resnext.training.stopping import TrainingStopped

    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "input_size", None) is not None and args.input_size < 1:
            raise UserError(f"--input-size must be positive, got {args.input_size}")
        if allocator_tuning_wanted():  # issue 6: up to 2x faster eager CPU steps
            tune_allocator()
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except TrainingStopped as e:
        print(f"resnext: {e}; continue with --resume", file=sys.stderr)
        return e.exit_status
    except (UserError, ValueError, NonFiniteLoss, OSError) as e:
        if os.environ.get("RESNEXT_DEBUG"):
            raise
        print(f"resnext: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, (UserError, ValueError)) else 1
    except KeyboardInterrupt:
        print("resnext: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
