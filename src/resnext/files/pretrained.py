"""Pretrained weights into a newly built network: all of them strictly, the classifier when it fits.

The package's `create_model(name, weights=...)` and `fpn_backbone(name, weights=...)` live here:
`models/` builds architectures only. One road for them and `resnext train --init`: the source is read by `load_model` (any file kind, URL,
torchvision or timm tag), then copied into the new network. Only the classifier may be left
out, and only because it cannot mean the same thing (another class count, or other classes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from resnext.files.weights import WeightsError, compare_state_dicts, infer_num_classes
from resnext.models import model as architecture
from resnext.models.backbone import backbone_with_fpn
from resnext.models.model import ResNeXt
from resnext.models.zoo import get_spec, model_name

log = logging.getLogger(__name__)

CLASSIFIER = ("fc.weight", "fc.bias")
# Spec fields a fine-tuned network may change: they leave every pretrained tensor meaningful.
_FREE = ("num_classes", "form", "zero_init_residual")


def create_model(name: str, weights: Any = None, **overrides: Any) -> ResNeXt:
    """Build a named variant, e.g. `create_model("resnext50_32x4d", num_classes=10, form="a")`.

    Options that the name does not fix (num_classes, form, shortcut, ...) may be overridden;
    overriding cardinality, width or depth with another value raises ValueError.
    `weights` loads pretrained weights: a model file, a URL, "torchvision[:TAG]" or
    "timm:NAME.TAG" (files/sources.py); a `num_classes` unlike the file's gets a new classifier.
    """
    if weights is None:
        return architecture.create_model(name, **overrides)
    return create_pretrained(name, weights, **overrides)


def fpn_backbone(
    name: str,
    weights: Any = None,
    trainable_stages: int = 3,
    returned_stages: Sequence[int] = (1, 2, 3, 4),
    frozen_bn: bool | None = None,
    out_channels: int = 256,
    **overrides: Any,
) -> nn.Module:
    """A torchvision `BackboneWithFPN` over the stages of a named ResNeXt (models/backbone.py).

    Args:
        name: registered variant, e.g. "resnext50_32x4d".
        weights: None or a source `create_model` takes (file, URL, "torchvision", "timm:...").
        trainable_stages: stages that train, counted from the last; the stem counts as one
            more (torchvision's `trainable_layers`: 0..5 for the ImageNet template, 3 default).
        returned_stages: stages (1 = conv2 ... 4 = conv5) whose outputs feed the FPN.
        frozen_bn: replace BN by torchvision's FrozenBatchNorm2d (fixed statistics and affine).
            Default: when `weights` are given, as torchvision's detection builders do
            (`FrozenBatchNorm2d if is_trained else BatchNorm2d`): detection batches of 1-2
            images per GPU are too small for BN statistics, so pretrained ones are kept.
        out_channels: channels of every FPN level.
        overrides: ModelSpec options for `create_model` (e.g. base_planes=16).
    """
    model = create_model(name, weights=weights, **overrides)
    frozen = weights is not None if frozen_bn is None else frozen_bn
    return backbone_with_fpn(model, trainable_stages, returned_stages, frozen, out_channels)


def read_pretrained(
    source: str | os.PathLike, model_name: str | None = None, form: str = "c"
) -> ResNeXt:
    """The network a weight source holds (short sources such as "torchvision" name `model_name`'s
    weights), built in `form`, with its preprocessing and class names."""
    from resnext.files.loader import load_model  # lazy: the loader imports the model package
    from resnext.files.sources import expand_source

    if model_name is not None:
        source = expand_source(source, model_name)
    return load_model(source, form=form)


def create_pretrained(name: str, weights: str | os.PathLike, **overrides: Any) -> ResNeXt:
    """`create_model(name, weights)`: the file's classes unless `num_classes` is given
    (then a new classifier). In training mode, as `create_model` without weights."""
    src = read_pretrained(weights, name, overrides.get("form", "c"))
    overrides.setdefault("num_classes", src.spec.num_classes)
    overrides.setdefault("in_channels", src.spec.in_channels)
    model = ResNeXt(get_spec(name, **overrides))
    model.name = name
    transfer(src, model, where=str(weights))
    return model


def transfer(
    src: ResNeXt, model: ResNeXt, class_names: Sequence[str] | None = None, where: str = ""
) -> list[str]:
    """Copy `src`'s weights into `model`; returns the classifier keys left re-initialised.

    Every tensor but the classifier's must fit (WeightsError naming the keys that do not). The
    classifier is kept when its shape fits and, where both are known, the class names agree;
    otherwise `model` keeps its fresh one. `model` takes `src`'s preprocessing and source.
    """
    check_fits(src, model, where)
    state, target = src.state_dict(), model.state_dict()
    body = {k: v for k, v in state.items() if k not in CLASSIFIER}
    head = [k for k in CLASSIFIER if k in target]
    fits = all(k in state and state[k].shape == target[k].shape for k in head)
    same = class_names is None or src.class_names is None
    same = same or list(src.class_names) == list(class_names)
    reinit = [] if fits and same else head
    new = {**target, **body, **({} if reinit else {k: state[k] for k in head})}
    model.load_state_dict(new, strict=True)
    if reinit:
        why = (
            f"{infer_num_classes(state) or 0} classes in the file, {model.num_classes} here"
            if not fits
            else "the file's classes are others"
        )
        log.info("re-initialised %s (%s)", ", ".join(reinit), why)
    model.preprocessing = getattr(src, "preprocessing", None)
    model.class_names = list(class_names) if class_names is not None else None
    if not reinit and model.class_names is None:
        model.class_names = getattr(src, "class_names", None)
    model.source = getattr(src, "source", None)
    return reinit


def check_fits(src: ResNeXt, model: ResNeXt, where: str = "") -> None:
    """WeightsError unless every tensor of `src` but the classifier fits `model` (names and
    shapes; `model` may live on the meta device) and the specs agree outside `_FREE`."""
    where = where or "the weights"
    differ = [
        f"{f.name}={getattr(src.spec, f.name)!r} (this model: {getattr(model.spec, f.name)!r})"
        for f in dataclasses.fields(model.spec)
        if f.name not in _FREE and getattr(src.spec, f.name) != getattr(model.spec, f.name)
    ]
    state, target = src.state_dict(), model.state_dict()
    body = {k: v for k, v in state.items() if k not in CLASSIFIER}
    report = compare_state_dicts(body, {k: v for k, v in target.items() if k not in CLASSIFIER})
    if not report.ok or differ:
        what = report.summary(limit=3) if not report.ok else ", ".join(differ)
        raise WeightsError(f"{where} holds a {_name(src)} model, not {_name(model)}: {what}")


def _name(model: ResNeXt) -> str:
    name = getattr(model, "name", None)
    if name:
        return name
    return model_name(model.spec) if model.spec.block == "bottleneck" else "custom"
