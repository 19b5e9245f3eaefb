"""Exceptions as the one line a user reads: the CLI and every library message use this."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
