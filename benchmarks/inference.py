"""Every inference path of a checkpoint on real images: top-1, agreement with fp32, images/s,
measured in the same run.

    python benchmarks/inference.py --checkpoint run/best.pt --data ../shared/data/cifar10-jpeg

Evaluates every image of `DATA/test` (class folders named as the checkpoint's class_names) with
fp32 eager, fp32 with BN folded, `optimize_for_inference` with PyTorch (channels_last +
torch.compile with freezing) and with ONNX Runtime, bf16, and int8 (calibrated on `--calib-images`
images spread evenly over `DATA/train`), and prints one JSON line: per path the top-1 accuracy,
the fraction of images whose top-1 class equals fp32 eager's, and images/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from resnext import fuse_for_inference
from resnext.data.images import decode_image, list_images
from resnext.files.loader import load_model
from resnext.inference.backends import optimize_for_inference
from resnext.inference.quantize import quantize_int8


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


PATHS = ("fp32", "fp32_fused", "fp32_compile", "onnxruntime", "bf16", "int8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="folder with train/ and test/ class folders")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=0, help="evaluate only every n-th test image")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {PATHS}")
    args = p.parse_args()
    if unknown := set(args.paths.split(",")) - set(PATHS):
        p.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    if args.threads:
        torch.set_num_threads(args.threads)
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
    builders = {
        "fp32": lambda: model,
        "fp32_fused": lambda: fuse_for_inference(model),
        "fp32_compile": lambda: optimize_for_inference(model, "fp32", backend="torch"),
        "onnxruntime": lambda: optimize_for_inference(model, "fp32", backend="onnxruntime"),
        "bf16": lambda: optimize_for_inference(model, "bf16"),
        "int8": lambda: quantize_int8(model, calibration),
    }
    reference = None
    for name in args.paths.split(","):
        start = time.perf_counter()
        pred, ips = predictions(builders[name](), x, args.batch_size)
        reference = pred if reference is None else reference
        results[name] = {
            "top1": round(100.0 * (pred == y).float().mean().item(), 2),
            "agreement_with_first": round(100.0 * (pred == reference).float().mean().item(), 2),
            "images_per_s": round(ips, 1),
            "seconds_with_preparation": round(time.perf_counter() - start, 1),
        }
        print(name, results[name], flush=True)
    first = args.paths.split(",")[0]
    for name in args.paths.split(",")[1:]:
        results[name]["speedup_vs_first"] = round(
            results[name]["images_per_s"] / results[first]["images_per_s"], 2
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
