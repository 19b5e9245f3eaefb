"""The ImageNet feed on the CPU: images/s per core against torchvision's reference pipeline.

    python benchmarks/feed.py [--images 320] [--batch 64] [--rounds 3]
    benchmarks/quiet.sh python -- python benchmarks/feed.py   # other python processes paused

Makes its own full-size photos (500x375 and 375x500 JPEGs, quality 90, cut from
scikit-learn's two sample photographs at random places, flipped at random), then times whole
epochs, interleaved round by round so that every pipeline sees the same machine:

- train, torchvision: ImageFolder + transforms v2 on PIL (RandomResizedCrop 224, flip, to float,
  normalise), a DataLoader over it;
- train, ours: `train_batches` of the `imagenet` recipe: workers decode, crop, flip (uint8),
  then colour jitter, PCA lighting and normalisation on the whole batch, here on the CPU;
- train, ours (feed only): the same workers, the batch stage left to the device (what a GPU
  run costs its CPUs); and the folder's without JPEG draft decoding (which only acts on crops
  at least twice the output size: `--scale 2` makes 1000x750 photos where it does);
- eval, torchvision: its preset on PIL (resize 256, centre crop 224, to float, normalise);
- eval, ours: `eval_batches` with the recipe's preprocessing;

each with 0 workers (one core) and with --workers, and ours for the folder and for the same
photos packed as WebDataset shards and parquet (`resnext pack`). CPU
time is the process's and its workers' (getrusage), so images per CPU-second is the figure per
core; the last lines say how many cores one GPU at 3,000 images/s needs. glibc's allocator is
tuned as the `resnext` command tunes it (allocator.py), for both pipelines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from resnext.allocator import tune_allocator
from resnext.cpus import usable_cpus
from resnext.data.batches import (
    PerImage,
    eval_batches,
    loader,
    train_batches,
    train_indices,
)
from resnext.data.datasets import load_dataset
from resnext.data.pack import pack_dataset
from resnext.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from resnext.data.transforms import InceptionCrop, train_transform
from resnext.training.config import resolve_config

GPU_RATE = 3000  # images/s of resnext50_32x4d on one H200 (issue's estimate from NVIDIA's figures)


def make_photos(root: Path, n: int, classes: int = 4, seed: int = 0, scale: float = 1.0) -> None:
    """`n` photos in `root/train/<class>/`: 500x375 (three in four) or 375x500, quality 90;
    enlarged `scale` times (bicubic) for a set of large photos."""
    rng = np.random.default_rng(seed)
    sources = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]  # 427x640
    for i in range(n):
        src = sources[i % 2]
        h, w = src.shape[:2]
        if rng.random() < 0.75:  # landscape: a 500x375 cut
            y, x = rng.integers(0, h - 375 + 1), rng.integers(0, w - 500 + 1)
            img = Image.fromarray(src[y : y + 375, x : x + 500])
        else:  # portrait: a 320x427 cut, enlarged to 375x500
            x = rng.integers(0, w - 320 + 1)
            img = Image.fromarray(src[:, x : x + 320]).resize((375, 500), Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if scale != 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (loader workers, once joined)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(batches) -> tuple[int, float, float]:
    """Images, wall seconds and CPU seconds of consuming `batches`."""
    wall, cpu, n = time.perf_counter(), cpu_seconds(), 0
    for _, y in batches:
        n += len(y)
    return n, time.perf_counter() - wall, cpu_seconds() - cpu


def reference(root: Path, train: bool, batch: int, workers: int):
    """torchvision's reference pipeline: ImageFolder + transforms v2 on PIL."""
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    norm = [v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]
    if train:
        geometry = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    ds = ImageFolder(str(root / "train"), transform=v2.Compose(geometry + to_float + norm))
    return torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=train, num_workers=workers, drop_last=train
    )


class FullDecode(InceptionCrop):
    """The inception crop without JPEG draft decoding (no `reduce`): what draft mode saves."""

    reduce = None


def feed_only(data, cfg, epoch: int, draft: bool = True):
    """Ours without the batch stage: the uint8 batches the workers hand over."""
    view = train_transform(cfg.augment, cfg.train_size, cfg.hflip)
    if not draft:
        view = FullDecode(cfg.train_size, cfg.hflip)
    ds = PerImage(data, view, cfg.seed)
    ds.epoch = epoch
    batches = train_indices(len(data), cfg.batch_size, cfg.seed, epoch)
    return ((x, y) for x, y, _ in loader(ds, batches, cfg.workers, False))


def pipelines(root: Path, layouts: dict, batch: int, workers: int) -> dict:
    """name -> a function of the round giving one epoch's batches."""
    cfg = resolve_config("imagenet", {"batch_size": batch, "workers": workers, "data": str(root)})
    pre = cfg.preprocessing()
    out = {
        ("train", "torchvision"): lambda r: reference(root, True, batch, workers),
        ("eval", "torchvision"): lambda r: reference(root, False, batch, workers),
    }
    for name, data in layouts.items():
        out[("train", f"ours {name}")] = lambda r, d=data: train_batches(d, cfg.feed(), r, 0, 0, 1)
        out[("train", f"ours {name}, feed only")] = lambda r, d=data: feed_only(d, cfg, r)
        if name == "folder":
            out[("train", "ours folder, feed only, no draft")] = lambda r, d=data: feed_only(
                d, cfg, r, draft=False
            )
        out[("eval", f"ours {name}")] = lambda r, d=data: eval_batches(
            d, batch, pre, False, workers
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="enlarge the photos (2: 1000x750)")
    parser.add_argument("--workers", type=int, default=usable_cpus())
    parser.add_argument(
        "--formats", type=lambda v: [f for f in v.split(",") if f], default=["wds", "parquet"],
        help="layouts besides the folder (comma-separated; empty for the folder only)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per process, as DataLoader workers run
    tune_allocator()  # as the `resnext` command does (workers inherit it); both pipelines gain
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        make_photos(root, args.images, scale=args.scale)
        layouts = {"folder": load_dataset("folder", str(root), "train", in_memory="no")}
        for fmt in args.formats:  # the same photos, packed by `resnext pack`
            pack_dataset("folder", str(root), fmt, str(Path(tmp) / fmt))
            layouts[fmt] = load_dataset(fmt, str(Path(tmp) / fmt), "train", in_memory="no")
        runs: dict = {}
        for r in range(args.rounds):
            for workers in (0, args.workers):
                for key, make in pipelines(root, layouts, args.batch, workers).items():
                    runs.setdefault((*key, workers), []).append(timed(make(r)))
    rows = []
    for (stage, name, workers), samples in runs.items():
        n = samples[0][0]
        wall = statistics.median(s[1] for s in samples)
        cpu = statistics.median(s[2] for s in samples)
        rows.append({"stage": stage, "pipeline": name, "workers": workers, "images": n,
                     "images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu, 1)})  # fmt: skip
    for row in rows:
        ref = next(x for x in rows if x["stage"] == row["stage"] and x["workers"] == row["workers"]
                   and x["pipeline"] == "torchvision")  # fmt: skip
        row["x_torchvision_per_core"] = round(row["images_per_cpu_s"] / ref["images_per_cpu_s"], 2)
        print(json.dumps(row))
    for row in rows:
        if row["stage"] == "train" and row["workers"] == args.workers:
            cores = GPU_RATE / row["images_per_cpu_s"]
            print(f"{row['pipeline']}: {cores:.1f} cores for one GPU at {GPU_RATE} images/s")
    print(json.dumps({"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                      "batch": args.batch, "rounds": args.rounds, "scale": args.scale}))  # fmt: skip


if __name__ == "__main__":
    main()
