"""int8 post-training quantization against fp32 on a checkpoint: top-1 on an image folder and
throughput, measured in the same run (issue 5).

    python benchmarks/int8.py --checkpoint run/best.pt --data ../shared/data/cifar10-jpeg

Calibrates on `--calib-images` images spread evenly over `DATA/train`, evaluates every image of
`DATA/test` (class folders named as the checkpoint's class_names) with fp32 eager, fp32 with BN
folded, and int8, and prints one JSON line with accuracies and images/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from resnext import fuse_for_inference
from resnext.images import eval_transform, list_images, read_image
from resnext.quantize import quantize_int8
from resnext.weights import load_model_file


def load_split(root: Path, classes: list[str], transform, every: int = 1):
    """Images and labels of a class-folder split; every `every`-th file only."""
    paths = list_images([root])[::every]
    index = {c: i for i, c in enumerate(classes)}
    x = torch.stack([read_image(p, transform) for p in paths])
    y = torch.tensor([index[p.parent.name] for p in paths])
    return x, y


@torch.no_grad()
def run(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(top-1 accuracy in percent, images per second) over all of x."""
    model(x[:batch_size])  # warm-up: allocations, oneDNN primitive caches
    correct, start = 0, time.perf_counter()
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    seconds = time.perf_counter() - start
    return 100.0 * correct / len(x), len(x) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="folder with train/ and test/ class folders")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=0, help="evaluate only every n-th test image")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ckpt = load_model_file(args.checkpoint)
    classes, transform = ckpt["class_names"], eval_transform(ckpt["preprocessing"])
    data = Path(args.data)
    n_train = len(list_images([data / "train"]))
    calib_x, _ = load_split(
        data / "train", classes, transform, max(1, n_train // args.calib_images)
    )
    calibration = list(calib_x[: args.calib_images].split(args.batch_size))
    x, y = load_split(data / "test", classes, transform, max(1, args.limit))
    start = time.perf_counter()
    qmodel = quantize_int8(model, calibration)
    quantize_s = time.perf_counter() - start
    results = {"checkpoint": args.checkpoint, "test_images": len(x)}
    results["calibration_images"] = sum(len(b) for b in calibration)
    results["threads"] = torch.get_num_threads()
    results["quantize_seconds"] = round(quantize_s, 1)
    models = {"fp32": model, "fp32_fused": fuse_for_inference(model), "int8": qmodel}
    for name, m in models.items():
        acc, ips = run(m, x, y, args.batch_size)
        results[f"{name}_top1"], results[f"{name}_images_per_s"] = round(acc, 2), round(ips, 1)
    results["top1_change"] = round(results["int8_top1"] - results["fp32_top1"], 2)
    results["speedup_vs_fp32"] = round(
        results["int8_images_per_s"] / results["fp32_images_per_s"], 2
    )
    results["speedup_vs_fused"] = round(
        results["int8_images_per_s"] / results["fp32_fused_images_per_s"], 2
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
