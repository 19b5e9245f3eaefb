"""`load_model`: any model file the project reads, to a network ready for evaluation.

One road for every caller (evaluate, predict, export, torch.hub, the Python API):

    source --resolve--> local file --read_model_file--> dict --import_state--> model
                                   +--(.onnx, TorchScript, .pt2)--> files/programs.py

`resolve` (files/model_file.py) is the one place where other kinds of sources join.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from resnext.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from resnext.files.checkpoint import CheckpointError
from resnext.files.convert import detect_source, import_state
from resnext.files.model_file import EXPORTED, file_kind, read_model_file, resolve
from resnext.models.model import ResNeXt
from resnext.models.zoo import ModelSpec, default_input_size

log = logging.getLogger(__name__)


def load_model(
    source: str | os.PathLike,
    model_name: str | None = None,
    key: str | None = None,
    trusted: bool = False,
    **overrides: Any,
) -> ResNeXt | nn.Module:
    """The network a model file holds, in eval mode, weights loaded strictly.

    Reads resnext checkpoints (.pt from the trainer or `convert`), .safetensors (with resnext's
    metadata, or a bare state_dict), and bare or wrapped torchvision / timm / pycls state_dicts,
    whose spec is read from the tensor shapes. The files `resnext export` writes (.onnx,
    TorchScript, .pt2) come back as an `ExportedModel` that runs the file itself (ONNX through
    ONNX Runtime), so what is evaluated is what is deployed; TorchScript and .pt2 files are
    programs, read only when `trusted`. The model carries what evaluation needs:

        model.spec           the ModelSpec it was built from
        model.preprocessing  a Preprocessing: the file's own, the one its source documents
                             (torchvision, timm, pycls), else ImageNet's defaults (with a warning)
        model.class_names    list of class names, or None

    Args:
        source: a model file (anything `resolve` accepts).
        model_name: registered variant to build a bare state_dict as (default: from the shapes).
        key: wrapper entry holding the weights, e.g. "model_ema".
        trusted: read TorchScript and .pt2 files, whose loading can run any code they hold.
            Weight files never run code, trusted or not.
        overrides: ModelSpec options for the built model, e.g. form="a".

    Raises:
        ValueError (CheckpointError): one line naming the file and what is wrong with it.
    """
    path = resolve(source)
    if (fmt := file_kind(path)) in EXPORTED:
        if model_name or key or overrides:
            raise CheckpointError(f"{path} is an exported {fmt} file; it takes no model options")
        from resnext.files.programs import check_runs, load_exported

        model, meta = load_exported(path, fmt, trusted)
        model.preprocessing = _preprocessing(meta, path, model.spec)
        check_runs(model, path)
        return model.eval()
    obj = read_model_file(path)
    kind, source_name, documented = detect_source(obj, path)
    model, payload = import_state(
        kind, obj, path, model_name, source_name, key, documented, **overrides
    )
    model.preprocessing = _preprocessing(payload, path, model.spec)
    model.class_names = payload.get("class_names")
    model.source = payload.get("source")
    return model.eval()


def _preprocessing(
    payload: dict[str, Any], path: os.PathLike, spec: ModelSpec | None
) -> Preprocessing:
    pre = payload.get("preprocessing")
    if not pre:
        default = default_preprocessing(spec)
        log.warning(
            "%s records no preprocessing; using resize %d, crop %d, %s, ImageNet mean/std",
            path, default.resize, default.crop, default.interpolation,
        )  # fmt: skip
        return default
    try:
        out = Preprocessing.from_dict(pre, channels=spec.in_channels if spec else None)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if spec is not None and out.channels != spec.in_channels:
        raise CheckpointError(
            f"{path}: preprocessing is for {out.channels} channels, the model takes "
            f"{spec.in_channels}"
        )
    return out


def model_metadata(model: ResNeXt) -> dict[str, Any]:
    """What `load_model` attached to a model, as a checkpoint's metadata (for writing files)."""
    pre = getattr(model, "preprocessing", None)
    return {
        "spec": model.spec.to_dict(),
        "model_name": getattr(model, "name", None),
        "class_names": getattr(model, "class_names", None),
        "preprocessing": pre.to_dict() if pre is not None else None,
        "source": getattr(model, "source", None),
    }


def default_preprocessing(spec: ModelSpec) -> Preprocessing:
    """What a model file without a record gets: the template's input size (zoo's
    `default_input_size`), resized first by ImageNet's 0.875 crop ratio (256 for 224) unless
    CIFAR-sized, and ImageNet statistics (grey models: their mean)."""
    crop = default_input_size(spec)
    resize = crop if spec.template == "cifar" else crop * 8 // 7
    channels = spec.in_channels
    if channels == 3:
        return Preprocessing(resize, crop, "bilinear", IMAGENET_MEAN, IMAGENET_STD, channels)
    m, s = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return Preprocessing(resize, crop, "bilinear", (m,) * channels, (s,) * channels, channels)
