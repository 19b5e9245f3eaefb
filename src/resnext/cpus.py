"""The CPUs this process may use, and how many decoding processes that allows."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as taskset and SLURM set it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(most: int = 4) -> int:
    """Decoding processes when none are asked for: `most`, but no more than the usable CPUs."""
    return min(most, usable_cpus())
