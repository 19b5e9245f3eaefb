"""Images/s of one CPU training step for candidate `cpu` study presets.

    python benchmarks/study_settings.py --part settings  # fp32/bf16 x NCHW/NHWC, ResNeXt-20
    python benchmarks/study_settings.py --part models    # the preset's ResNeXt-11, C = 1..8

Times forward + backward + SGD step at batch 128 on random 32x32 inputs (median of a few steps),
so the preset's model, precision and memory layout are chosen from numbers measured here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
import torch.nn.functional as F

from resnext.allocator import tune_allocator
from resnext.models.design import design_width
from resnext.models.model import build_model
from resnext.models.zoo import ModelSpec
from resnext.precision import autocast


def step_rate(spec: ModelSpec, batch: int, precision: str, layout: str, iters: int) -> float:
    """Median images/s of a training step."""
    torch.manual_seed(0)
    model = build_model(spec).train()
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(iters + 2):
        began = time.perf_counter()
        with autocast(torch.device("cpu"), precision):  # DTYPES[precision], off for fp32
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - began)
    return batch / statistics.median(times)


def spec_for(depth: int, planes: int, cardinality: int) -> ModelSpec:
    depths = {11: (1, 1, 1), 20: (2, 2, 2), 29: (3, 3, 3)}[depth]
    d = design_width(cardinality, 64, planes)
    return ModelSpec("cifar", "bottleneck", depths, cardinality, d, 10, base_planes=planes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--part", choices=["settings", "models", "all"], default="all")
    args = parser.parse_args()
    tune_allocator()
    rows = []
    if args.part in ("settings", "all"):
        for c in (1, 8):
            spec = spec_for(20, 16, c)
            for precision in ("fp32", "bf16"):
                for layout in ("nchw", "nhwc"):
                    rate = step_rate(spec, args.batch, precision, layout, args.iters)
                    rows.append({"depth": 20, "planes": 16, "C": c, "d": spec.base_width,
                                 "precision": precision, "layout": layout, "img_s": rate})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    if args.part in ("models", "all"):  # the preset's network: grouped conv (c) or split paths (b)
        for c in (1, 2, 4, 8):
            for form in ("c", "b") if c > 1 else ("c",):
                spec = dataclasses.replace(spec_for(11, 16, c), form=form)
                rate = step_rate(spec, args.batch, "fp32", "nhwc", args.iters)
                rows.append({"depth": 11, "planes": 16, "C": c, "d": spec.base_width,
                             "form": form, "layout": "nhwc", "img_s": rate})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
