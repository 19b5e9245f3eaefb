"""`resnext convert`: weights from torchvision, timm, pycls or resnext files to a resnext checkpoint.

The result knows everything `predict`, `evaluate` and `export` need: spec, class names and the
preprocessing the source documents. `load_model` imports bare state_dicts the same way, in memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from resnext.extras import require
from resnext.files.checkpoint import CheckpointError
from resnext.files.interop import (
    architecture_name,
    infer_spec,
    is_pycls,
    registered_name,
    same_architecture,
    source_preprocessing,
    timm_name_for_path,
    to_torchvision_layout,
    torchvision_name_for_file,
)
from resnext.files.model_file import check_metadata, checkpoint_metadata, read_model_file
from resnext.files.weights import (
    WeightsError,
    compare_state_dicts,
    infer_num_classes,
    load_weights,
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
    if source == "timm":  # for the preprocessing timm documents for its weights
        require("timm", "timm", "--from timm")
    obj = read_model_file(path)
    _, payload = import_state(source, obj, Path(path), model_name, source_name, key, **overrides)
    return payload


def detect_source(obj: dict[str, Any], path: Path) -> tuple[str, str | None, bool]:
    """(source, source's model name, whether the source is known) for a file's contents.

    Ours carry a spec; pycls has its own names; torchvision's published files are known by
    name (resnet18-f37072fd.pth: the hash tells V1 from V2 weights); timm's by their Hugging
    Face cache folder (models--timm--NAME). Any other bare state_dict has torchvision's names
    but no documented preprocessing.
    """
    if obj.get("spec"):
        return "resnext", None, True
    try:
        pycls = is_pycls(unwrap_state_dict(obj))
    except WeightsError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if pycls:
        return "pycls", None, True
    name = torchvision_name_for_file(path.name)
    if name:
        return "torchvision", name, True
    name = timm_name_for_path(str(path.absolute()))
    if name:
        return "timm", name, True
    return "torchvision", None, False


def import_state(
    source: str,
    obj: dict[str, Any],
    path: Path,
    model_name: str | None = None,
    source_name: str | None = None,
    key: str | None = None,
    documented: bool = True,
    **overrides: Any,
) -> tuple[ResNeXt, dict[str, Any]]:
    """The model (on the meta device's storage, weights assigned) and checkpoint payload for
    what a file holds; every failure is a CheckpointError naming `path`.

    Args:
        documented: look up the preprocessing and class names the source documents.
    """
    try:
        spec, name, known, state = _spec_and_state(source, obj, model_name, key, overrides)
    except (ValueError, TypeError, KeyError) as e:  # foreign networks, bad specs, wrappers
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = ResNeXt(spec)
    try:
        load_weights(model, state, strict=True)
    except WeightsError:
        report = compare_state_dicts(state, model.state_dict())
        fits = "its spec" if known else "the model"
        raise CheckpointError(f"{path}: weights do not fit {fits}: {report.summary()}") from None
    if name:
        model.name = name
    info = (
        source_preprocessing(source, source_name or name, path.name) if documented else {}
    ) or {}
    class_names = known.get("class_names", info.get("class_names"))
    if class_names is None and spec.num_classes == 1000 and spec.template == "imagenet":
        class_names = imagenet_class_names()
    if class_names is not None and len(class_names) != spec.num_classes:
        log.warning("dropping %d class names for %d outputs", len(class_names), spec.num_classes)
        class_names = None
    preprocessing = known.get("preprocessing", info.get("preprocessing"))
    payload = {
        **known,
        "model": model.state_dict(),
        "spec": spec.to_dict(),
        "model_name": name,
        "class_names": class_names,
        "preprocessing": preprocessing,
        "source": known.get("source")
        or {"format": source, "file": path.name, "weights": info.get("weights")},
    }
    return model, payload


def _spec_and_state(
    source: str, obj: dict, model_name: str | None, key: str | None, overrides: dict
) -> tuple[ModelSpec, str | None, dict[str, Any], dict]:
    """The spec to build, its name, our metadata (for our files) and the weights in our names."""
    if source == "resnext" and obj.get("spec"):
        check_metadata(obj)
        spec_dict = {**obj["spec"], "depths": tuple(obj["spec"]["depths"])}
        spec = ModelSpec(**{**spec_dict, **overrides})
        if model_name is not None and not same_architecture(spec, get_spec(model_name)):
            raise ValueError(f"holds a {architecture_name(spec)} model, not {model_name}")
        state = to_torchvision_layout(source, unwrap_state_dict(obj, key))
        return spec, obj.get("model_name"), checkpoint_metadata(obj), state
    state = to_torchvision_layout(source, unwrap_state_dict(obj, key))
    spec = _resolve_spec(state, model_name, overrides)
    return spec, model_name or registered_name(spec), {}, state
