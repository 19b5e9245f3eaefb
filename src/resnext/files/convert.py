"""`resnext convert`: weights from torchvision, timm, pycls or resnext files to a resnext checkpoint.

The result knows everything `predict`, `evaluate` and `export` need (issue 5): spec, class names
and the preprocessing the source documents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from resnext.files.interop import (
    infer_spec,
    registered_name,
    source_preprocessing,
    to_torchvision_layout,
)
from resnext.files.weights import (
    checkpoint_metadata,
    infer_num_classes,
    load_weights,
    read_weights_file,
    unwrap_state_dict,
)
from resnext.models.model import ResNeXt
from resnext.models.zoo import ModelSpec, get_spec

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "timm", "pycls", "resnext")


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in the standard index order (shipped with torchvision)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _resolve_spec(state: dict, model_name: str | None, overrides: dict[str, Any]) -> ModelSpec:
    if model_name is None:
        spec = infer_spec(state)
        return ModelSpec(**{**spec.to_dict(), "depths": spec.depths, **overrides})
    num_classes = infer_num_classes(state)
    extra = {"num_classes": num_classes} if num_classes is not None else {}
    return get_spec(model_name, **{**extra, **overrides})


def import_weights(
    source: str,
    path: str | os.PathLike,
    model_name: str | None = None,
    source_name: str | None = None,
    key: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A resnext checkpoint payload for the weights in `path`, checked by a strict load.

    Args:
        source: "torchvision", "timm", "pycls" or "resnext" (the file's naming and conventions).
        path: .pt/.pth/.bin/.safetensors file, bare or wrapped state_dict.
        model_name: registered variant to build; default: inferred from the tensor shapes.
        source_name: the source's own model name for its documented preprocessing
            (timm "resnext50_32x4d.a1h_in1k"); default: the variant's name.
        key: wrapper entry holding the weights (e.g. "model_ema").
        overrides: ModelSpec options (form, ...) for the built model.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    obj = read_weights_file(path)
    if source == "resnext" and "spec" in obj and model_name is None:
        spec_dict = {**obj["spec"], "depths": tuple(obj["spec"]["depths"])}
        spec = ModelSpec(**{**spec_dict, **overrides})
        known = checkpoint_metadata(obj)
        name = obj.get("model_name")
    else:
        known = {}
        spec = None
    state = to_torchvision_layout(source, unwrap_state_dict(obj, key))
    if spec is None:
        spec = _resolve_spec(state, model_name, overrides)
        name = model_name or registered_name(spec)
    with torch.device("meta"):
        model = ResNeXt(spec)
    load_weights(model, state, strict=True)
    info = source_preprocessing(source, source_name or name, Path(path).name) or {}
    class_names = known.get("class_names", info.get("class_names"))
    if class_names is None and spec.num_classes == 1000 and spec.template == "imagenet":
        class_names = imagenet_class_names()
    if class_names is not None and len(class_names) != spec.num_classes:
        log.warning("dropping %d class names for %d outputs", len(class_names), spec.num_classes)
        class_names = None
    preprocessing = known.get("preprocessing", info.get("preprocessing"))
    if preprocessing is None:
        log.warning("%s: no documented preprocessing for these weights; predict needs one", path)
    return {
        **known,
        "model": model.state_dict(),
        "spec": spec.to_dict(),
        "model_name": name,
        "class_names": class_names,
        "preprocessing": preprocessing,
        "source": {"format": source, "file": Path(path).name, "weights": info.get("weights")},
    }
