"""What every subcommand shares: one-line user errors, the parser class, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors printed as one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none to show (a flag, or
    None: the help text then says where the value comes from, e.g. "the recipe's")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        none = action.default is None or action.default is False or action.default == []
        if none or action.default == argparse.SUPPRESS or "(default" in text:
            return text
        return super()._get_help_string(action) or text


def log_to_stderr(enabled: bool) -> None:
    """INFO lines of the library on stderr for the main process, warnings only elsewhere."""
    level = logging.INFO if enabled else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def int_list(flag: str, text: str) -> tuple[int, ...]:
    """`"1,2,4"` -> (1, 2, 4); anything else is a one-line user error."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UserError(f"--{flag} expects comma-separated positive integers, got {text!r}")
    return values
