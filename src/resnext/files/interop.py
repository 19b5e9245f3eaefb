"""Foreign weight formats: pycls names, spec inference, and the preprocessing each source documents.

torchvision and timm ResNet/ResNeXt state_dicts already use our names (STYLE.md rule 4). pycls
uses its own (`stem.conv`, `s1.b1.f.a`, `head.fc`), mapped by one pure function and its inverse.
Wrong preprocessing is the usual reason ported weights score near 0%, so every import
records the preprocessing its source documents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from resnext.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from resnext.errors import one_line
from resnext.extras import require
from resnext.files.sources import _torchvision_model
from resnext.models.forms import convert_state_dict
from resnext.models.zoo import ModelSpec, get_spec, list_models, model_name

StateDict = dict[str, Tensor]

# Block parts: torchvision name -> pycls name (pycls/models/resnet.py: ResBlock, BottleneckTransform).
_PYCLS_PARTS = {
    "conv1": "f.a",
    "bn1": "f.a_bn",
    "conv2": "f.b",
    "bn2": "f.b_bn",
    "conv3": "f.c",
    "bn3": "f.c_bn",
    "downsample.0": "proj",
    "downsample.1": "bn",
}
_PYCLS_TOP = {"conv1": "stem.conv", "bn1": "stem.bn", "fc": "head.fc"}
_TV_BLOCK = re.compile(r"^layer(?P<stage>\d+)\.(?P<block>\d+)\.(?P<rest>.+)$")
_PYCLS_BLOCK = re.compile(r"^s(?P<stage>\d+)\.b(?P<block>\d+)\.(?P<rest>.+)$")


def _rename(rest: str, table: Mapping[str, str], key: str) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise ValueError(f"no mapping for state_dict key {key!r}")


def torchvision_to_pycls(state: Mapping[str, Tensor]) -> StateDict:
    """Pure renaming of a torchvision-named ResNet/ResNeXt state_dict to pycls's names."""
    out: StateDict = {}
    for key, value in state.items():
        m = _TV_BLOCK.match(key)
        if m:
            name = f"s{m['stage']}.b{int(m['block']) + 1}." + _rename(m["rest"], _PYCLS_PARTS, key)
        else:
            name = _rename(key, _PYCLS_TOP, key)
        out[name] = value
    return out


def pycls_to_torchvision(state: Mapping[str, Tensor]) -> StateDict:
    """Pure renaming of a pycls ResNet/ResNeXt state_dict to torchvision's names (the inverse)."""
    parts = {v: k for k, v in _PYCLS_PARTS.items()}
    top = {v: k for k, v in _PYCLS_TOP.items()}
    out: StateDict = {}
    for key, value in state.items():
        m = _PYCLS_BLOCK.match(key)
        if m:
            name = f"layer{m['stage']}.{int(m['block']) - 1}." + _rename(m["rest"], parts, key)
        else:
            name = _rename(key, top, key)
        out[name] = value
    return out


def is_pycls(state: Mapping[str, Any]) -> bool:
    """True for a state_dict in pycls's layout."""
    return "stem.conv.weight" in state or any(_PYCLS_BLOCK.match(k) for k in state)


def bgr_to_rgb(state: Mapping[str, Tensor]) -> StateDict:
    """Reverse the input channels of the stem conv: pycls trains on BGR images (OpenCV)."""
    out = dict(state)
    out["conv1.weight"] = state["conv1.weight"].flip(1).contiguous()
    return out


def infer_spec(state: Mapping[str, Tensor]) -> ModelSpec:
    """The ModelSpec (form c) a torchvision-named state_dict fits, read from its shapes."""
    state = convert_state_dict(dict(state), 1, "c")
    if "conv1.weight" not in state:
        raise ValueError("not a ResNet/ResNeXt state_dict: no conv1.weight")
    stem = state["conv1.weight"]
    template = "imagenet" if stem.shape[-1] == 7 else "cifar"
    blocks = {(int(m["stage"]), int(m["block"])) for m in map(_TV_BLOCK.match, state) if m}
    stages = sorted({s for s, _ in blocks})
    depths = tuple(1 + max(b for s2, b in blocks if s2 == s) for s in stages)
    bottleneck = "layer1.0.conv3.weight" in state
    cardinality, base_width = 1, 64
    base_planes = int(stem.shape[0])  # the stem's width is the first stage's planes
    if bottleneck:
        grouped = state["layer1.0.conv2.weight"]  # [C*w, w, 3, 3], w = planes * d / 64
        width = int(grouped.shape[1])
        cardinality = int(grouped.shape[0]) // width
        base_width = round(width * 64 / base_planes)
    has_proj = {(s, b) for s, b in blocks if f"layer{s}.{b}.downsample.0.weight" in state}
    shortcut = "C" if any(b > 0 for _, b in has_proj) else ("B" if has_proj else "A")
    return ModelSpec(
        template=template,
        block="bottleneck" if bottleneck else "basic",
        depths=depths,
        cardinality=cardinality,
        base_width=base_width,
        num_classes=int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0,
        in_channels=int(stem.shape[1]),
        shortcut=shortcut,
        base_planes=base_planes,
    )


_ARCHITECTURE = ("template", "block", "depths", "cardinality", "base_width", "base_planes")


def same_architecture(a: ModelSpec, b: ModelSpec) -> bool:
    """The same network but for num_classes, form and options (one weights file fits both)."""
    return all(getattr(a, k) == getattr(b, k) for k in _ARCHITECTURE)


def registered_name(spec: ModelSpec) -> str | None:
    """The registered variant a spec is (ignoring num_classes, form and options), if any."""
    return next((n for n in list_models() if same_architecture(get_spec(n), spec)), None)


def architecture_name(spec: ModelSpec) -> str:
    """The name `get_spec` rebuilds this architecture from: registered, else parsed."""
    return registered_name(spec) or model_name(spec)


def torchvision_preprocessing(name: str, filename: str | None = None) -> dict[str, Any] | None:
    """Preprocessing and class names that torchvision documents for its weights of `name`.

    The weight enum whose download URL ends in `filename` is used (V1 and V2 weights differ in
    resize); without a match, torchvision's DEFAULT weights.
    """
    enum = _torchvision_model(name)
    if enum is None:
        return None
    chosen = next((w for w in enum if filename and w.url.endswith("/" + filename)), enum.DEFAULT)
    t = chosen.transforms()
    pre = Preprocessing(
        int(t.resize_size[0]), int(t.crop_size[0]), t.interpolation.value, t.mean, t.std
    )
    return {
        "preprocessing": pre.to_dict(),
        "class_names": list(chosen.meta["categories"]),
        "weights": str(chosen),
    }


def torchvision_name_for_file(filename: str) -> str | None:
    """The torchvision model whose published weights are named `filename`, e.g.
    "resnet18-f37072fd.pth" -> "resnet18" (the hash tells V1 and V2 weights apart)."""
    for name in list_models():
        if any(w.url.endswith("/" + filename) for w in _torchvision_model(name) or ()):
            return name
    return None


def timm_name_for_path(path: str) -> str | None:
    """The timm model a Hugging Face hub cache path names: .../models--timm--NAME/snapshots/..."""
    m = re.search(r"models--timm--([^/\\]+)", path)
    return m[1] if m else None


def timm_preprocessing(name: str) -> dict[str, Any] | None:
    """Preprocessing timm's pretrained_cfg documents for `name` (e.g. "resnext50_32x4d.a1h_in1k")."""
    timm = require("timm", "timm", "reading timm's documented preprocessing")
    try:
        cfg = timm.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. a tag timm has no weights for
        raise ValueError(f"timm knows no pretrained config {name!r}: {one_line(e)}") from None
    if cfg is None:
        return None
    crop = int(cfg.input_size[-1])
    # timm's eval transform: shorter side floor(crop / crop_pct), then the centre crop.
    pre = Preprocessing(int(crop / cfg.crop_pct), crop, cfg.interpolation, cfg.mean, cfg.std)
    return {
        "preprocessing": pre.to_dict(),
        "class_names": None,
        "weights": f"timm:{name}" + (f".{cfg.tag}" if cfg.tag and "." not in name else ""),
    }


# pycls's test transform: shorter side to TEST.IM_SIZE (256), centre crop TRAIN.IM_SIZE (224),
# cv2 bilinear; its mean/std are ImageNet's in BGR order, which after `bgr_to_rgb` are these.
PYCLS_PREPROCESSING = Preprocessing(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


def source_preprocessing(
    source: str, name: str | None, filename: str | None = None
) -> dict[str, Any] | None:
    """Preprocessing, class names and a weights label for imported weights, from their source."""
    if source == "torchvision" and name:
        return torchvision_preprocessing(name, filename)
    if source == "timm" and name:
        return timm_preprocessing(name)
    if source == "pycls":
        return {
            "preprocessing": PYCLS_PREPROCESSING.to_dict(),
            "class_names": None,
            "weights": "pycls",
        }
    return None


def to_torchvision_layout(source: str, state: Mapping[str, Tensor], rgb: bool = True) -> StateDict:
    """A source's state_dict in our names (form c); pycls gets its stem flipped to RGB input."""
    if source == "pycls":
        state = pycls_to_torchvision(state)
        return bgr_to_rgb(state) if rgb else state
    if source in ("torchvision", "timm", "resnext"):
        return convert_state_dict(dict(state), 1, "c")
    raise ValueError(f"unknown source {source!r}; use torchvision, timm, pycls or resnext")
