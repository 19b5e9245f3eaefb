"""Error of a checkpoint on a dataset's validation split, as the paper measures it (section 5)."""

from __future__ import annotations

import os
from typing import Any

from resnext.data.batches import eval_batches
from resnext.data.datasets import load_dataset
from resnext.files.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from resnext.training.distributed import setup
from resnext.training.engine import evaluate


def evaluate_checkpoint(
    path: str | os.PathLike,
    dataset: str,
    data: str = "",
    resize: int | None = None,
    crop: int | None = None,
    ten_crop: bool = False,
    batch_size: int = 100,
    workers: int = 4,
) -> dict[str, Any]:
    """Top-1 and top-5 error (percent) of the checkpoint at `path`.

    Args:
        path: a checkpoint holding model, spec, class_names and preprocessing.
        dataset: "folder", "cifar10", "cifar100" or "digits"; its validation/test split is used.
        data: the dataset's path.
        resize: shorter side before cropping; defaults to `crop` if that is given (Table 5's
            320x320 test), else to the checkpoint's preprocessing.
        crop: centre crop size (default: the checkpoint's).
        ten_crop: average the softmax of four corner and centre crops and their mirrors.
    """
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, str(path))
    pre = ckpt.get("preprocessing") or {}
    if crop is None and "crop" not in pre:
        raise CheckpointError(f"{path} has no preprocessing; pass --crop")
    resize = resize or (crop if crop else pre.get("resize", pre.get("crop")))
    crop = crop or pre["crop"]
    if resize < crop:
        raise ValueError(f"--resize {resize} is smaller than --crop {crop}")
    ctx = setup("auto")
    val = load_dataset(dataset, data, "val")
    classes = ckpt.get("class_names")
    if classes and list(classes) != val.classes:
        raise ValueError(f"{path} was trained on other classes than {dataset} {data!r} holds")
    if val.images is not None:
        val.images, val.labels = val.images.to(ctx.device), val.labels.to(ctx.device)
    model = model.to(ctx.device)
    batches = eval_batches(
        val, batch_size, (resize, crop, ten_crop), pre["mean"], pre["std"], workers
    )
    result = evaluate(model, batches)
    return {**result, "resize": resize, "crop": crop, "ten_crop": ten_crop, "checkpoint": str(path)}
