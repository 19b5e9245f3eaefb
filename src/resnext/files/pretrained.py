"""Pretrained weights into a newly built network: all of them strictly, the classifier when it fits.

One road for `create_model(name, weights=...)`, `resnext train --init` and
`fpn_backbone(weights=...)`: the source is read by `load_model` (any file kind, URL,
torchvision or timm tag), then copied into the new network. Only the classifier may be left
out, and only because it cannot mean the same thing (another class count, or other classes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

from resnext.files.weights import WeightsError, compare_state_dicts, infer_num_classes
from resnext.models.model import ResNeXt
from resnext.models.zoo import get_spec, model_name

log = logging.getLogger(__name__)

CLASSIFIER = ("fc.weight", "fc.bias")
# Spec fields a fine-tuned network may change: they leave every pretrained tensor meaningful.
_FREE = ("num_classes", "form", "zero_init_residual")


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
    """`create_model(name, weights=...)`: the file's classes unless `num_classes` is given
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
