"""Resident memory after each epoch of a CPU training run on the CIFAR-10 JPEGs.

    python benchmarks/memory.py --data DATA [--epochs 5] [--limit 2000]

Trains the `cifar` recipe on the image folder (decoded into memory once) with a narrow model
and a class-spread subset of the training images, through the real `train()`: checkpoints,
metrics and the plot included. Prints the resident set size (VmRSS) after every epoch and the
ratio epoch 5 / epoch 2; a flat run stays within 5%.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from resnext.training.config import resolve_config
from resnext.training.train import train


def rss_mib() -> float:
    """This process's resident memory now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class EpochMemory(logging.Handler):
    """Takes the RSS when train() logs an epoch's metrics line (after its checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith('{"epoch"'):
            self.rows.append((json.loads(text)["epoch"], rss_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the CIFAR-10 JPEG folder (DATA/train)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2000, help="training images (0: all)")
    parser.add_argument("--model", default="resnext11_4x16d_p16")
    args = parser.parse_args()
    cfg = resolve_config("cifar", {
        "dataset": "folder", "data": args.data, "model": args.model, "epochs": args.epochs,
        "train_limit": args.limit, "val_limit": 1000, "workers": 0, "log_steps": 10_000,
    })  # fmt: skip
    handler = EpochMemory()
    logging.getLogger("resnext.training.train").addHandler(handler)
    logging.getLogger("resnext.training.train").setLevel(logging.INFO)
    print(f"before loading: {rss_mib():.1f} MiB")
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out)
    for epoch, mib in handler.rows:
        print(f"epoch {epoch}: {mib:.1f} MiB")
    by_epoch = dict(handler.rows)
    if 2 in by_epoch and args.epochs in by_epoch:
        ratio = by_epoch[args.epochs] / by_epoch[2]
        print(f"epoch {args.epochs} / epoch 2: {ratio:.4f} ({100 * (ratio - 1):+.2f}%)")


if __name__ == "__main__":
    main()
