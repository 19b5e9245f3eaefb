"""`resnext export`: a model to ONNX, TorchScript, a .pt2 program or safetensors, checked against eager.

Every file is read back by `load_model`, the reader `evaluate` and `predict` use, and run on a
batch of a different size than the one used for export and (with dynamic height and width) on
a larger image, so a graph that silently fixed a dimension fails here, not in deployment. Class
names and preprocessing travel with the file (files/programs.py writes the program formats;
safetensors metadata); the program formats also carry "input" (what a client must do to an
image, in words) and "precision". int8 is `export_int8` in inference/quantize.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from resnext.errors import one_line
from resnext.files.loader import load_model, model_metadata
from resnext.files.model_file import EXPORTED, file_kind, resolve, save_safetensors
from resnext.files.programs import export_onnx, export_program, export_torchscript, spatial_minimum
from resnext.files.weights import load_weights
from resnext.models.model import ResNeXt

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript", "exported-program", "safetensors"]
FORMATS: tuple[str, ...] = get_args(Format)
EXPORT_BATCH, CHECK_BATCH = 2, 3  # export with one batch size, verify with another
CHECK_GROWTH = 32  # verify dynamic height and width on an image this much larger


def example_input(model: ResNeXt, size: int, batch: int, seed: int = 0) -> Tensor:
    """A reproducible random batch in the model's input shape."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.spec.in_channels, size, size, generator=g)


SUFFIXES = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".ts"),
    "exported-program": (".pt2",),
    "safetensors": (".safetensors",),
}


def check_suffix(fmt: str, out: str | os.PathLike) -> None:
    """Refuse an output name whose suffix is not the format's, before anything is written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    name = Path(out).name
    if Path(out).suffix not in SUFFIXES[fmt]:
        raise ValueError(f"{fmt} files end in {' or '.join(SUFFIXES[fmt])}, got {name}")


def _write(model, fmt, out, example, dynamic, spatial, metadata) -> None:
    if fmt == "onnx":
        export_onnx(model, out, example, dynamic, spatial, metadata)
    elif fmt == "torchscript":
        export_torchscript(model, out, metadata)
    elif fmt == "exported-program":
        export_program(model, out, example, dynamic, spatial, metadata)
    else:
        save_safetensors(out, model.state_dict(), metadata)


def read_back(model: ResNeXt, path: Path, metadata: dict[str, Any] | None) -> nn.Module:
    """The written file as `evaluate` will run it, through `load_model` (a program we have just
    written is trusted); weights that record no spec are loaded strictly into a new network of
    `model`'s spec."""
    if path.suffix != ".safetensors" or "spec" in (metadata or {}):
        return load_model(path, trusted=True)
    twin = ResNeXt(model.spec)
    load_weights(twin, path)
    return twin.eval()


@torch.no_grad()
def export_model(
    model: ResNeXt,
    fmt: str,
    out: str | os.PathLike,
    size: int,
    dynamic: bool = True,
    metadata: dict[str, Any] | None = None,
    spatial: bool = True,
) -> float:
    """Write `model` in format `fmt` to `out`, reload it, and return the max abs diff to eager.

    Args:
        model: the network (put in eval mode here).
        fmt: "onnx", "torchscript", "exported-program" or "safetensors".
        out: output path.
        size: square input side for the example and check batches.
        dynamic: dynamic batch dimension (ONNX and exported programs; TorchScript always is).
        metadata: spec, class names, preprocessing (JSON-able), stored with the file; the
            program formats need preprocessing, which `load_model` reads back.
        spatial: dynamic height and width (ONNX and exported programs), checked on a larger image.
    """
    check_suffix(fmt, out)
    out = Path(out)
    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    if spatial and fmt in ("onnx", "exported-program"):  # inside the range the export accepts
        size = max(size, spatial_minimum(model))
    example = example_input(model, size, EXPORT_BATCH)
    batch = CHECK_BATCH if dynamic else EXPORT_BATCH
    checks = [example_input(model, size, batch, seed=1)]
    if spatial and fmt != "safetensors":
        checks.append(example_input(model, size + CHECK_GROWTH, batch, seed=2))
    try:
        _write(model, fmt, out, example, dynamic, spatial, metadata)
        deployed = read_back(model, out, metadata)
        diff = max((deployed(x) - model(x)).abs().max().item() for x in checks)
    except (ValueError, ImportError):
        raise
    except Exception as e:  # torch's exporters raise many kinds; the user needs one line
        log.debug("%s export failed", fmt, exc_info=True)
        raise ValueError(f"{fmt} export of {out.name} failed: {one_line(e)}") from None
    log.info("%s: %s written, max abs diff to eager %.3g", out, fmt, diff)
    return diff


def source_model(checkpoint: str | os.PathLike) -> ResNeXt:
    """The network of a model file to export from; ValueError for a file already exported,
    refused unread (a program may run code)."""
    path = resolve(checkpoint)
    if (kind := file_kind(path)) in EXPORTED:
        raise ValueError(f"{path} is an exported {kind} file; export from the checkpoint instead")
    return load_model(path)


def file_metadata(model: ResNeXt, precision: str) -> dict[str, Any]:
    """What every exported program file carries: the model's metadata, the input contract in
    words (Preprocessing.contract) and the precision."""
    return {
        **model_metadata(model),
        "input": model.preprocessing.contract(),
        "precision": precision,
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    dynamic: bool = True,
    size: int | None = None,
    spatial: bool = True,
) -> float:
    """`resnext export`: a model file's model in another format, verified against eager.

    The example input is the model's own preprocessing crop unless `size` is given.
    """
    model = source_model(checkpoint)
    side = size or model.preprocessing.crop
    meta = model_metadata(model) if fmt == "safetensors" else file_metadata(model, "fp32")
    return export_model(model, fmt, out, side, dynamic, meta, spatial)
