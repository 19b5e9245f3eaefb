"""`resnext predict`: top-k classes for image files, with the model file's own preprocessing."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from resnext.data.images import batched_images, list_images
from resnext.data.preprocessing import Preprocessing
from resnext.files.loader import load_model

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_images(
    model: nn.Module,
    preprocessing: Preprocessing,
    paths: Sequence[str | os.PathLike],
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
) -> Iterator[dict[str, Any]]:
    """One result per image, in order: `{"path", "top": [{"class", "index", "prob"}]}` or
    `{"path", "error"}` for a file that cannot be read (the others still get predictions).

    Images are decoded to `preprocessing.channels` channels (a grey model takes colour photos).
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be positive, got {top_k}")
    transform = preprocessing.transform()
    model.eval()
    found = list_images(paths)
    for chunk, batch, failed in batched_images(
        found, transform, preprocessing.channels, batch_size
    ):
        rows = iter([])
        if batch is not None:
            probs = model(batch).softmax(dim=1)
            values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
            rows = zip(values.tolist(), indices.tolist())
        for path in chunk:
            if path in failed:
                yield {"path": str(path), "error": failed[path]}
                continue
            v, i = next(rows)
            top = [
                {"class": class_names[j] if class_names else str(j), "index": j, "prob": p}
                for p, j in zip(v, i)
            ]
            yield {"path": str(path), "top": top}


def predict_file(
    source: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    top_k: int = 5,
    trusted: bool = False,
) -> Iterator[dict[str, Any]]:
    """`predict_images` with the model, preprocessing and class names of a model file
    (`trusted`: run a TorchScript or .pt2 file, as `load_model` says)."""
    if top_k < 1:
        raise ValueError(f"--top-k must be positive, got {top_k}")
    model = load_model(source, trusted=trusted)
    return predict_images(model, model.preprocessing, paths, model.class_names, top_k)
