"""torch.hub entry points: one per registered model, e.g.

    torch.hub.load(repo_dir, "resnext50_32x4d", source="local", weights="model.safetensors")

`weights` is anything `resnext.load_model` reads (.pt/.pth/.safetensors, any wrapper or block
form, torchvision/timm/pycls names), a URL (downloaded once into the hub cache), "torchvision"
or "torchvision:TAG" (torchvision's published weights), "timm:NAME.TAG", or None for random
initialisation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchvision"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # a plain checkout works without `pip install`
    sys.path.insert(0, str(_SRC))

from resnext import create_model, list_models  # noqa: E402


def _build(name: str, weights: str | os.PathLike | None, overrides: dict[str, Any]):
    # One road with create_model(weights=...): files, URLs (downloaded once into the hub
    # cache), "torchvision[:TAG]", "timm:NAME.TAG"; the file's classes unless num_classes.
    model = create_model(name, weights=weights, **overrides)
    return model if weights is None else model.eval()


def _entry(name: str):
    def entry(weights: str | os.PathLike | None = None, **overrides: Any):
        return _build(name, weights, overrides)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"ResNeXt family model `{name}`; `weights`: any model file `resnext.load_model` reads, "
        "a URL, 'torchvision[:TAG]', 'timm:NAME.TAG', or None (random); `overrides`: ModelSpec "
        "options such as num_classes or form. "
        "With weights, the model carries .preprocessing and .class_names."
    )
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
