"""The CIFAR training path on the CPU: the loader alone against the model step.

    python benchmarks/loader.py --data DATA [--model resnext11_8x12d_p16]

Decodes the image folder into memory once (timed), then times (1) `train_batches` alone:
indexing the uint8 tensor, normalising and the batched pad-crop-flip, and (2) one training
step of the model on those batches. The loader keeps up when its images/s are far above the
step's; both run in this process, one after the other, so neither competes with the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from resnext.allocator import tune_allocator
from resnext.data.batches import train_batches
from resnext.data.datasets import load_dataset
from resnext.models.model import build_model
from resnext.models.zoo import get_spec
from resnext.study.grid import PRESETS, run_config
from resnext.training.engine import Trainee, train_step
from resnext.training.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="an image folder (DATA/train, DATA/test)")
    parser.add_argument("--model", default="resnext11_8x12d_p16", help="the cpu preset's C=8")
    parser.add_argument(
        "--split",
        choices=["train", "auto"],
        default="train",
        help="auto: the held-out split (val/ or test/), which decodes less",
    )
    parser.add_argument("--loader-steps", type=int, default=100)
    parser.add_argument("--model-steps", type=int, default=8)
    args = parser.parse_args()
    tune_allocator()
    cfg = run_config(PRESETS["cpu"], {"dataset": "folder", "data": args.data})
    cfg = dataclasses.replace(cfg, model=args.model)
    began = time.perf_counter()
    data = load_dataset("folder", args.data, args.split, "yes")
    decode = time.perf_counter() - began

    began, n = time.perf_counter(), 0
    for i, (_x, y) in enumerate(train_batches(data, cfg.feed(), 0, 0, 0, 1)):
        n += len(y)
        if i + 1 == args.loader_steps:
            break
    loader_rate = n / (time.perf_counter() - began)

    spec = get_spec(cfg.model, num_classes=10)
    raw = build_model(spec).to(memory_format=torch.channels_last)
    t = Trainee(raw, raw, build_optimizer(raw, cfg), torch.amp.GradScaler("cpu", enabled=False))
    gen = torch.Generator().manual_seed(0)
    batches = train_batches(data, cfg.feed(), 0, 0, 0, 1)
    train_step(t, *next(batches), cfg, gen)  # warm-up
    began, n = time.perf_counter(), 0
    for i, (x, y) in enumerate(batches):
        train_step(t, x, y, cfg, gen)
        n += len(y)
        if i + 1 == args.model_steps:
            break
    step_rate = n / (time.perf_counter() - began)
    row = {
        "images": len(data),
        "decode_seconds": round(decode, 1),
        "loader_images_per_s": round(loader_rate),
        "step_images_per_s": round(step_rate, 1),
        "model": args.model,
        "batch": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "split": args.split,
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
