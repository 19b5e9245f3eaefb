"""Every inference path of a checkpoint on real images: top-1, agreement with fp32, images/s,
measured in the same run; and int8 speed on ResNeXt-50 against torchvision's eager fp32.

    python benchmarks/inference.py --checkpoint run/best.pt --data DATA
    python benchmarks/inference.py --speed resnext50_32x4d --batches 1,8,32

The first evaluates every image of `DATA/test` (class folders named as the checkpoint's
class_names) with fp32 eager, fp32 with BN folded, `optimize_for_inference` with PyTorch
(channels_last + torch.compile with freezing) and with ONNX Runtime, bf16, and int8: one QDQ
ONNX file (the one `resnext export --precision int8` writes) run by ONNX Runtime and by OpenVINO,
and PyTorch's FX flow, calibrated on `--calib-images` images spread evenly over `DATA/train`. It
prints one JSON line: per path the top-1 accuracy, the fraction of images whose top-1 class
equals fp32 eager's, images/s, and the two int8 runtimes' agreement on the same file.

The second times int8 (random weights and calibration: speed only) against torchvision's eager
fp32 at each batch size, alternating the paths after warm-up, and prints one JSON line per batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resnext import create_model, fuse_for_inference
from resnext.allocator import tune_allocator
from resnext.data.images import decode_image, list_images
from resnext.files.loader import load_model
from resnext.files.runtimes import OnnxModel
from resnext.inference.backends import optimize_for_inference
from resnext.inference.bench import torchvision_reference
from resnext.inference.quantize import quantize_int8, quantize_onnx
from resnext.models.zoo import default_input_size


def load_split(root: Path, classes: list[str], pre, every: int = 1):
    """Images and labels of a class-folder split; every `every`-th file only."""
    paths = list_images([root])[::every]
    index = {c: i for i, c in enumerate(classes)}
    transform = pre.transform()
    x = torch.stack([transform(decode_image(p, pre.channels)) for p in paths])
    y = torch.tensor([index[p.parent.name] for p in paths])
    return x, y


@torch.no_grad()
def predictions(model, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float]:
    """(top-1 class of every image, images per second) over all of x."""
    model(x[:batch_size])  # warm-up: compilation, allocations, oneDNN primitive caches
    out, start = [], time.perf_counter()
    for i in range(0, len(x), batch_size):
        out.append(model(x[i : i + batch_size]).argmax(1))
    seconds = time.perf_counter() - start
    return torch.cat(out), len(x) / seconds


PATHS = (
    "fp32",
    "fp32_fused",
    "fp32_compile",
    "onnxruntime",
    "bf16",
    "int8_onnxruntime",
    "int8_openvino",
    "int8_fx",
)


def int8_runtimes(model, calibration, folder: str) -> dict:
    """The int8 QDQ file written once, run by each runtime: what `optimize_for_inference(model,
    "int8")` builds (OpenVINO where installed), and what the exported file does."""
    path = quantize_onnx(model, calibration, Path(folder) / "int8.onnx")
    threads = torch.get_num_threads()
    return {
        "int8_onnxruntime": lambda: OnnxModel(path, "onnxruntime", threads),
        "int8_openvino": lambda: OnnxModel(path, "openvino", threads),
    }


@torch.no_grad()
def speed(name: str, batches: list[int], iters: int, calib_images: int) -> None:
    """int8 paths against torchvision's eager fp32, alternated, one JSON line per batch size."""
    model = create_model(name).eval()
    reference = torchvision_reference(model)
    if reference is None:
        raise SystemExit(f"{name} has no torchvision counterpart")
    size = default_input_size(model.spec)
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randn(8, 3, size, size, generator=g) for _ in range(calib_images // 8)]
    with tempfile.TemporaryDirectory() as tmp:
        built = {k: f() for k, f in int8_runtimes(model, calibration, tmp).items()}
        built["int8_fx"] = quantize_int8(model, calibration)
        built["fp32_onnxruntime"] = optimize_for_inference(model)
        paths = {"torchvision_eager_fp32": reference.eval(), **built}
        for batch in batches:
            x = torch.randn(batch, 3, size, size, generator=g)
            seconds: dict[str, list[float]] = {k: [] for k in paths}
            for f in paths.values():
                f(x)  # warm-up: compilation per shape, allocations, primitive caches
            for _ in range(iters):
                for k, f in paths.items():
                    start = time.perf_counter()
                    f(x)
                    seconds[k].append(time.perf_counter() - start)
            ips = {k: batch / statistics.median(v) for k, v in seconds.items()}
            base = ips["torchvision_eager_fp32"]
            row = {
                k: {"images_per_s": round(v, 2), "x": round(v / base, 2)} for k, v in ips.items()
            }
            out = {
                "model": name,
                "batch": batch,
                "iters": iters,
                "threads": torch.get_num_threads(),
            }
            print(json.dumps(out | row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint")
    p.add_argument("--data", help="folder with train/ and test/ class folders")
    p.add_argument("--speed", metavar="MODEL", help="time int8 of MODEL against torchvision")
    p.add_argument("--batches", default="1,8,32", help="--speed: batch sizes")
    p.add_argument("--iters", type=int, default=3, help="--speed: timed runs per path and batch")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=0, help="evaluate only every n-th test image")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {PATHS}")
    args = p.parse_args()
    tune_allocator()  # as the `resnext` command does: eager fp32 (the reference) at its fastest
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speed:
        batches = [int(b) for b in args.batches.split(",")]
        return speed(args.speed, batches, args.iters, min(args.calib_images, 64))
    if not (args.checkpoint and args.data):
        p.error("--checkpoint and --data (or --speed MODEL)")
    if unknown := set(args.paths.split(",")) - set(PATHS):
        p.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    model = load_model(args.checkpoint)
    classes, transform = model.class_names, model.preprocessing
    data = Path(args.data)
    n_train = len(list_images([data / "train"]))
    calib_x, _ = load_split(
        data / "train", classes, transform, max(1, n_train // args.calib_images)
    )
    calibration = list(calib_x[: args.calib_images].split(args.batch_size))
    x, y = load_split(data / "test", classes, transform, max(1, args.limit))
    results = {"checkpoint": args.checkpoint, "test_images": len(x)}
    results["calibration_images"] = sum(len(b) for b in calibration)
    results["threads"] = torch.get_num_threads()
    tmp = tempfile.TemporaryDirectory()
    builders = {
        "fp32": lambda: model,
        "fp32_fused": lambda: fuse_for_inference(model),
        "fp32_compile": lambda: optimize_for_inference(model, "fp32", backend="torch"),
        "onnxruntime": lambda: optimize_for_inference(model, "fp32", backend="onnxruntime"),
        "bf16": lambda: optimize_for_inference(model, "bf16"),
        "int8_fx": lambda: quantize_int8(model, calibration),
    }
    if {"int8_onnxruntime", "int8_openvino"} & set(args.paths.split(",")):
        builders |= int8_runtimes(model, calibration, tmp.name)
    reference, preds = None, {}
    for name in args.paths.split(","):
        start = time.perf_counter()
        pred, ips = predictions(builders[name](), x, args.batch_size)
        reference = pred if reference is None else reference
        preds[name] = pred
        results[name] = {
            "top1": round(100.0 * (pred == y).float().mean().item(), 2),
            "agreement_with_first": round(100.0 * (pred == reference).float().mean().item(), 2),
            "images_per_s": round(ips, 1),
            "seconds_with_preparation": round(time.perf_counter() - start, 1),
        }
        print(name, results[name], flush=True)
    if {"int8_onnxruntime", "int8_openvino"} <= preds.keys():
        same = preds["int8_onnxruntime"] == preds["int8_openvino"]
        results["int8_file_onnxruntime_vs_openvino"] = round(100.0 * same.float().mean().item(), 2)
    tmp.cleanup()
    first = args.paths.split(",")[0]
    for name in args.paths.split(",")[1:]:
        results[name]["speedup_vs_first"] = round(
            results[name]["images_per_s"] / results[first]["images_per_s"], 2
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
