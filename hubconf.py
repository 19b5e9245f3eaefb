"""torch.hub entry points: one per registered model, e.g.

    torch.hub.load(repo_dir, "resnext50_32x4d", source="local", weights="model.safetensors")

`weights` is anything `resnext.load_model` reads (.pt/.pth/.safetensors, any wrapper or block
form, torchvision/timm/pycls names), a URL (downloaded once into the hub cache), or None for
random initialisation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

dependencies = ["torch", "torchvision"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # a plain checkout works without `pip install`
    sys.path.insert(0, str(_SRC))

from resnext.files.loader import load_model  # noqa: E402
from resnext.models.model import create_model  # noqa: E402
from resnext.models.zoo import list_models  # noqa: E402


def _local_file(weights: str | os.PathLike) -> str | os.PathLike:
    """A URL is downloaded into torch.hub's cache (once); anything else goes to `load_model`."""
    text = str(weights)
    if urlparse(text).scheme in ("http", "https", "file"):
        import torch.hub

        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(text).path).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(text, str(target), progress=True)
        return target
    return weights


def _build(name: str, weights: str | os.PathLike | None, overrides: dict[str, Any]):
    if weights is None:
        return create_model(name, **overrides)
    # The entry's architecture, with the file's classifier size unless asked otherwise.
    return load_model(_local_file(weights), model_name=name, **overrides)


def _entry(name: str):
    def entry(weights: str | os.PathLike | None = None, **overrides: Any):
        return _build(name, weights, overrides)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"ResNeXt family model `{name}`; `weights`: any model file `resnext.load_model` reads, "
        "a URL, or None (random); `overrides`: ModelSpec options such as num_classes or form. "
        "With weights, the model carries .preprocessing and .class_names."
    )
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
