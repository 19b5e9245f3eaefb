"""Fingerprints of fixed deterministic runs: the SHA-256 of the trained weights of short runs on
digits and on a small photo set read as a folder, as WebDataset shards and as parquet files.

A change that must leave training unchanged (a refactoring of the readers, say) is checked by
running this before and after it: every line must be the same.

    python benchmarks/fingerprint.py [--keep DIR]

The photos are crops of scikit-learn's two sample photographs (nothing is downloaded), with a
bad file among them so that the bad-image road is part of the fingerprint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnext.cli import main
from resnext.files.model_file import read_model_file

CLASSES = ("cat", "dog", "ship")
STATS = ["--set", "mean=0.5,0.5,0.5", "--set", "std=0.2,0.2,0.2"]


def write_photos(root: Path, per_class: dict[str, int]) -> Path:
    """`root/<split>/<class>/<i>.jpg`, 160x120 crops of the sample photos, one tint a class."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    tints = ((1.0, 0.8, 0.8), (0.8, 1.0, 0.8), (0.8, 0.8, 1.0))
    for offset, (split, n) in enumerate(per_class.items()):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                k = offset * 50 + i
                src = photos[(label + k) % len(photos)]
                x, y = (
                    (37 * k + 101 * label) % (src.shape[1] - 320),
                    (23 * k) % (src.shape[0] - 240),
                )
                crop = src[y : y + 240, x : x + 320] * np.array(tints[label])
                image = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
                image.resize((160, 120), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
    return root


def weights_digest(run: Path) -> str:
    """SHA-256 over the trained weights, in key order."""
    state = read_model_file(run / "last.pt")["model"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def files_digest(root: Path) -> str:
    """SHA-256 over the names and bytes of every file under `root`, in name order; the index
    (`_index/`) is left out: it records the shards' modification times."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "_index" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def train(out: Path, *args: str) -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--recipe", "tiny", "--out", str(out), *args])
    if code:
        raise SystemExit(f"training {out.name} failed with exit status {code}")
    return weights_digest(out)


def fingerprints(work: Path) -> dict[str, str]:
    folder = write_photos(work / "folder", {"train": 12, "val": 3})
    for fmt in ("wds", "parquet"):
        args = ["pack", "--data", str(folder), "--format", fmt, "--out", str(work / fmt)]
        if main([*args, "--shard-size", "7", "--name", "photos"]):
            raise SystemExit(f"pack --format {fmt} failed")
    out = {f"pack --format {fmt}": files_digest(work / fmt) for fmt in ("wds", "parquet")}
    out["digits"] = train(work / "run-digits")
    for name in ("folder", "wds", "parquet"):
        for workers in (0, 2):
            run = work / f"run-{name}-{workers}"
            data = ["--dataset", name, "--data", str(work / name), "--set", f"workers={workers}"]
            out[f"{name}, {workers} workers"] = train(run, *data, *STATS)
    return out


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="write the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        for name, digest in fingerprints(work).items():
            print(f"{digest}  {name}")


if __name__ == "__main__":
    main_()
