"""Error of a model file on a dataset's validation split, as the paper measures it (section 5)."""

from __future__ import annotations

import logging
import os
from typing import Any

from resnext.cpus import default_workers
from resnext.data.batches import eval_batches
from resnext.data.datasets import FILE_DATASETS, load_dataset
from resnext.data.samples import common_classes
from resnext.files.loader import load_model
from resnext.training.distributed import setup
from resnext.training.engine import evaluate

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    path: str | os.PathLike,
    dataset: str,
    data: str = "",
    resize: int | None = None,
    crop: int | None = None,
    ten_crop: bool = False,
    batch_size: int = 100,
    workers: int | None = None,
    split: str = "auto",
    trusted: bool = False,
) -> dict[str, Any]:
    """Top-1 and top-5 error (percent) of the model file at `path`.

    Images go through the model's own Preprocessing (interpolation included), the same
    transform `predict` uses, so both give the same class for the same image.

    Args:
        path: any model file `load_model` reads.
        dataset: "folder", "wds", "parquet", "cifar10", "cifar100" or "digits"; its
            validation/test split is used.
        data: the dataset's path.
        resize: shorter side before cropping; defaults to `crop` if that is given (Table 5's
            320x320 test), else to the model file's preprocessing.
        crop: centre crop size (default: the model file's).
        ten_crop: average the softmax of four corner and centre crops and their mirrors.
        workers: decoding processes for a folder (None: cpus.default_workers, at most 4).
        split: "val", "test", or "auto" (datasets.held_out_split: a folder's val/, else test/).
        trusted: run a TorchScript or .pt2 file (`load_model`'s `trusted`).
    """
    if resize is not None and resize < (crop or 0):
        raise ValueError(f"--resize {resize} is smaller than --crop {crop}")
    model = load_model(path, trusted=trusted)
    pre = model.preprocessing.with_view(resize, crop)
    ctx = setup("auto")
    # Files (a folder, shards) are read one by one, each decoded to the model's channels (a grey
    # model evaluates colour images as grey, as predict reads them).
    # Data that records no class names has the model's classes (a label past them is bad).
    count = getattr(getattr(model, "spec", None), "num_classes", 0) or len(model.class_names or [])
    memory = "no" if dataset in FILE_DATASETS else "auto"
    val = load_dataset(dataset, data, split, in_memory=memory, num_classes=count)
    if val.images is None:
        val = val.replace(decode_channels=pre.channels)
    _check_classes(model, val.classes, path, f"{dataset} {data!r}")
    if val.images is not None:
        if val.images.shape[1] != pre.channels:
            raise ValueError(
                f"{dataset} {data!r} holds {val.images.shape[1]}-channel images; "
                f"{path} takes {pre.channels}"
            )
        val = val.to(ctx.device)
    model = model.to(ctx.device)
    if workers is None:
        workers = default_workers()
    batches = eval_batches(val, batch_size, pre, ten_crop, workers)
    result = evaluate(model, batches)
    return {
        **result,
        "resize": pre.resize,
        "crop": pre.crop,
        "ten_crop": ten_crop,
        "checkpoint": str(path),
        "split": val.split,
    }


def _check_classes(model: Any, classes: list[str], path: Any, where: str) -> None:
    """Refuse a dataset of other classes. Imported weights name their classes in words
    ("tench") where an ImageNet folder has synset ids ("n01440764") in the same sorted order,
    so for them only the count must agree."""
    ours = model.class_names
    if not ours or common_classes(list(ours), classes) is not None:
        return
    if len(ours) != len(classes) or not _imported(model):
        raise ValueError(f"{path} was trained on other classes than {where} holds")
    log.warning(
        "%s names its %d classes otherwise than %s (%s vs %s); taking the folders' sorted "
        "order as the model's class order", path, len(ours), where, ours[0], classes[0],
    )  # fmt: skip


def _imported(model: Any) -> bool:
    """Weights from another library (torchvision, timm, pycls). Every loaded model has a `source`
    (convert.import_state records our own files as format "resnext"), so it is the format that
    tells them apart."""
    source = getattr(model, "source", None)
    fmt = source.get("format") if isinstance(source, dict) else source
    return bool(fmt) and fmt != "resnext"
