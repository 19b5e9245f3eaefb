"""The standard speed matrix, written to docs/matrix_{cpu,cuda}.md and JSON beside it.

    python benchmarks/matrix.py                 # CPU rows (37 min measured on 2 idle cores)
    python benchmarks/matrix.py --quick         # small batch and few iterations, for a smoke run
    python benchmarks/matrix.py --device cuda   # GPU rows: AMP, channels_last, compile
    python benchmarks/matrix.py --only 8x12d --out docs/matrix_cpu_8x12d.md   # rows by label

Every row times our model and torchvision's twin (same weights, same input) interleaved in this
process. The eager rows are run twice, with glibc's allocator defaults and with the tuned
setting, to show what the allocator alone is worth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from resnext.allocator import tune_allocator
from resnext.inference.bench import BenchConfig, markdown, run_row

ROOT = Path(__file__).resolve().parents[1]


def cpu_rows(batch: int, iters: int) -> list[tuple[str, BenchConfig, bool]]:
    """(label, config, tuned allocator) for the CPU matrix.

    Slow rows (bf16 without native support, forms a and b) time fewer iterations or a smaller
    batch; the whole matrix took 37 minutes on 2 idle cores (docs/matrix_cpu.md).
    """
    few = max(2, iters // 2)
    infer = BenchConfig("resnext50_32x4d", "infer", batch, iters=iters, layout="nchw", warmup=2)
    train = BenchConfig("resnext50_32x4d", "train", batch, iters=few, layout="nchw", warmup=2)
    forms = replace(infer, batch_size=max(1, batch // 4), iters=few)
    cifar = [  # the cpu study preset's smallest and largest cardinality, its batch of 128
        BenchConfig(name, "train", 4 * batch, iters=iters, layout="nchw", warmup=2)
        for name in ("resnext11_1x64d_p16", "resnext11_8x12d_p16")
    ]
    rows = [
        ("eager, glibc defaults", infer, False),
        ("eager, tuned allocator", infer, True),
        ("BN folded + channels_last", replace(infer, layout="nhwc"), True),
        ("compile + freezing + channels_last", replace(infer, layout="nhwc", compile=True), True),
        ("ONNX Runtime (BN folded, fp32)", replace(infer, backend="onnxruntime"), True),
        ("bf16 compile + channels_last", replace(infer, layout="nhwc", compile=True,
                                                 precision="bf16", iters=few), True),
        ("form c (eager), small batch", forms, True),
        ("form b (eager), small batch", replace(forms, form="b"), True),
        ("form a (eager), small batch", replace(forms, form="a"), True),
        ("train eager", train, True),
        ("train channels_last", replace(train, layout="nhwc"), True),
        ("train channels_last + compile", replace(train, layout="nhwc", compile=True), True),
    ]  # fmt: skip
    for cfg in cifar:
        label = cfg.model.split("_", 1)[1]
        rows += [
            (f"CIFAR preset {label} train eager", cfg, True),
            (f"CIFAR preset {label} train channels_last", replace(cfg, layout="nhwc"), True),
            (f"CIFAR preset {label} train channels_last + compile",
             replace(cfg, layout="nhwc", compile=True), True),
            (f"CIFAR preset {label} train channels_last + bf16",
             replace(cfg, layout="nhwc", precision="bf16", iters=few), True),
        ]  # fmt: skip
        if cfg.model.endswith("8x12d_p16"):  # 3-channel groups in stage 1: what training runs
            rows += [
                (f"CIFAR preset {label} train channels_last + merged groups",
                 replace(cfg, layout="nhwc", merge_groups=True), True),
                (f"CIFAR preset {label} train channels_last + merged groups + compile",
                 replace(cfg, layout="nhwc", merge_groups=True, compile=True), True),
            ]  # fmt: skip
    return rows


def gpu_rows(batch: int, iters: int) -> list[tuple[str, BenchConfig, bool]]:
    """Training and inference at the best GPU settings for the two reference models."""
    rows = []
    for name in ("resnext50_32x4d", "resnext101_32x4d"):
        base = BenchConfig(name, "train", batch, "bf16", "nhwc", True, iters=iters, device="cuda")
        rows.append((f"{name} train AMP bf16 + compile", base, True))
        rows.append((f"{name} infer bf16 + compile", replace(base, mode="infer"), True))
    return rows


SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)


def cpu_name() -> str:
    """The CPU model and the instruction sets that decide fp32, bf16 and int8 speed, as `lscpu`
    shows them: a figure holds for the CPU it was measured on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    field = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines())
    }
    flags = set(field.get("flags", "").split())
    named = [f if f in flags else f"no {f}" for f in SPEED_FLAGS]
    return f"{field.get('model name', platform.machine())} ({', '.join(named)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny batch and iterations")
    parser.add_argument("--out", type=Path, default=None, help="default docs/matrix_DEVICE.md")
    parser.add_argument("--only", default="", help="run only the rows whose label contains this")
    args = parser.parse_args()
    args.out = args.out or ROOT / "docs" / f"matrix_{args.device}.md"
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        plan = gpu_rows(8 if args.quick else 256, 3 if args.quick else 20)
    else:
        plan = cpu_rows(4 if args.quick else 32, 2 if args.quick else 8)
    plan = [row for row in plan if args.only in row[0]]
    if not plan:
        parser.error(f"no row label contains {args.only!r}")
    load_before = os.getloadavg()
    rows = []
    for label, cfg, tuned in plan:
        tune_allocator(tuned)
        if args.quick:
            cfg = replace(
                cfg, warmup=1, input_size=64 if cfg.input_size is None else cfg.input_size
            )
        t = time.time()
        row = run_row(cfg) | {"label": label, "tuned_allocator": tuned}
        print(f"{label}: {row['images_per_s']:.1f} img/s, {row['ratio']:.2f}x "
              f"({time.time() - t:.0f} s)", flush=True)  # fmt: skip
        rows.append(row)
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads"
    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    labels = "\n".join(f"{i + 1}. {r['label']}" for i, r in enumerate(rows))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.write_text(
        f"# Speed matrix ({args.device})\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine}, torch "
        f"{torch.__version__}, with `python benchmarks/matrix.py"
        f"{' --device cuda' if args.device == 'cuda' else ''}{' --quick' if args.quick else ''}"
        f"{f' --only {args.only}' if args.only else ''}`."
        f"\nRatios are against torchvision eager fp32 NCHW measured in the same run. "
        f"Load average (1 min) {load_before[0]:.1f} before and {os.getloadavg()[0]:.1f} after: "
        f"above 0 means other work shared the cores.\n\n"
        f"{table}\nRows in order:\n\n{labels}\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
