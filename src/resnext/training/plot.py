"""Training curves in the style of the paper's Figure 5: top-1 error against epochs."""

from __future__ import annotations

import json
import os
from pathlib import Path

PLOT_NAME = "errors.png"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch lines of a run's metrics.jsonl; a line torn by a kill mid-write is skipped
    (the next start drops it too, see training/rundir.keep_metrics)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def plot_run(run_dir: str | os.PathLike) -> Path:
    """Write `run_dir/errors.png`: training (thin) and validation (thick, where the run
    validated) top-1 error, in %."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; files only
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no epochs yet")
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r["train_top1_error"] for r in rows], lw=1, label="train")
    if all("val_top1_error" in r for r in rows):  # none with val_split=none
        ax.plot(epochs, [r["val_top1_error"] for r in rows], lw=2.5, label="val")
    ax.set(xlabel="epochs", ylabel="top-1 error (%)", title=Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / PLOT_NAME
    fig.savefig(path)
    plt.close(fig)
    return path
