"""Export to ONNX, TorchScript, torch.export programs and safetensors, each checked against eager.

Every format is reloaded after writing and run on a batch of a different size than the one used
for export, and (with dynamic height and width) on a larger image, so a graph that silently fixed
a dimension fails here, not in deployment. Class names and preprocessing travel with the file:
ONNX metadata_props, TorchScript and .pt2 extra files ("resnext.json"), safetensors metadata;
the program formats also carry "input" (what a client must do to an image, in words) and
"precision". int8 (ONNX only) is a QDQ file from inference/quantize.py, checked through the same
reader `evaluate` and `predict` use, against eager fp32 on its calibration images.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from resnext.errors import one_line
from resnext.extras import require
from resnext.files.loader import load_model, model_metadata
from resnext.files.model_file import EXPORTED, file_kind, resolve, save_safetensors
from resnext.models.model import ResNeXt

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript", "exported-program", "safetensors"]
FORMATS: tuple[str, ...] = get_args(Format)
ONNX_OPSET = 18  # >= 17; 18 is what torch's dynamo exporter targets natively
EXPORT_BATCH, CHECK_BATCH = 2, 3  # export with one batch size, verify with another
CHECK_GROWTH = 32  # verify dynamic height and width on an image this much larger
META_FILE = "resnext.json"  # extra file of TorchScript and .pt2 archives


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


def spatial_minimum(model: nn.Module) -> int:
    """The smallest height and width a dynamic-shape export accepts: one more than the network's
    total stride, so the last stage's map is at least 2 pixels (torch.export specialises a side
    that could become 1, and refuses the range). 5 for a three-stage CIFAR net, 33 for ImageNet's."""
    info = getattr(model, "feature_info", None)
    return (info[-1]["reduction"] if info else 32) + 1


def _dynamic_dims(batch: bool, spatial: bool, minimum: int = 33) -> dict | None:
    """torch.export's dynamic shapes for input "x": batch (dim 0), height and width (2, 3)."""
    dims = {0: torch.export.Dim("batch", min=1, max=4096)} if batch else {}
    if spatial:
        dims |= {2: torch.export.Dim("height", min=minimum, max=4096)}
        dims |= {3: torch.export.Dim("width", min=minimum, max=4096)}
    return {"x": dims} if dims else None


def check_suffix(fmt: str, out: str | os.PathLike) -> None:
    """Refuse an output name whose suffix is not the format's, before anything is written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    name = Path(out).name
    if Path(out).suffix not in SUFFIXES[fmt]:
        raise ValueError(f"{fmt} files end in {' or '.join(SUFFIXES[fmt])}, got {name}")


def export_onnx(
    model: nn.Module,
    path: Path,
    example: Tensor,
    dynamic: bool = True,
    spatial: bool = True,
    metadata: dict[str, Any] | None = None,
) -> None:
    """ONNX (opset 18) via torch.export, input "x" and output "logits", batch and height/width
    dynamic if asked; `metadata` (JSON values) goes into the model's metadata_props."""
    onnx = require("onnx", "export", "onnx export")
    require("onnxscript", "export", "onnx export")
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes=_dynamic_dims(dynamic, spatial, spatial_minimum(model)),
        external_data=False,
        verbose=False,
    )
    if metadata:
        proto = onnx.load(str(path))
        props = {k: json.dumps(v) for k, v in metadata.items() if v is not None}
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(path))


def run_onnx(path: Path, x: Tensor) -> Tensor:
    """Outputs of an ONNX file under onnxruntime on the CPU."""
    ort = require("onnxruntime", "export", "checking an onnx export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def export_torchscript(model: nn.Module, path: Path, metadata: dict | None = None) -> None:
    """TorchScript by scripting (no tracing: no shape baked in)."""
    extra = {META_FILE: json.dumps(metadata or {})}
    with warnings.catch_warnings():  # deprecated in torch 2.x, still asked for by C++ deployments
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path), _extra_files=extra)


def run_torchscript(path: Path, x: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")(x)


def export_program(
    model: nn.Module,
    path: Path,
    example: Tensor,
    dynamic: bool = True,
    spatial: bool = True,
    metadata: dict | None = None,
) -> None:
    """A torch.export ExportedProgram (.pt2), loadable with `torch.export.load`."""
    dims = _dynamic_dims(dynamic, spatial, spatial_minimum(model))
    program = torch.export.export(model, (example,), dynamic_shapes=dims)
    torch.export.save(program, str(path), extra_files={META_FILE: json.dumps(metadata or {})})


def run_program(path: Path, x: Tensor) -> Tensor:
    return torch.export.load(str(path)).module()(x)


def _write(model, fmt, out, example, dynamic, spatial, metadata):
    """Write one format; return a callable that runs the reloaded file."""
    if fmt == "onnx":
        export_onnx(model, out, example, dynamic, spatial, metadata)
        return functools.partial(run_onnx, out)
    if fmt == "torchscript":
        export_torchscript(model, out, metadata)
        return functools.partial(run_torchscript, out)
    if fmt == "exported-program":
        export_program(model, out, example, dynamic, spatial, metadata)
        return functools.partial(run_program, out)
    save_safetensors(out, model.state_dict(), metadata)
    return load_model(out) if metadata and "spec" in metadata else model


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
        metadata: spec, class names, preprocessing (JSON-able), stored with the file.
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
        run = _write(model, fmt, out, example, dynamic, spatial, metadata)
        diff = max((run(x) - model(x)).abs().max().item() for x in checks)
    except (ValueError, ImportError):
        raise
    except Exception as e:  # torch's exporters raise many kinds; the user needs one line
        log.debug("%s export failed", fmt, exc_info=True)
        raise ValueError(f"{fmt} export of {out.name} failed: {one_line(e)}") from None
    log.info("%s: %s written, max abs diff to eager %.3g", out, fmt, diff)
    return diff


def _source_model(checkpoint: str | os.PathLike) -> ResNeXt:
    path = resolve(checkpoint)
    if (kind := file_kind(path)) in EXPORTED:  # refused unread: a program may run code
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
    model = _source_model(checkpoint)
    side = size or model.preprocessing.crop
    meta = model_metadata(model) if fmt == "safetensors" else file_metadata(model, "fp32")
    return export_model(model, fmt, out, side, dynamic, meta, spatial)


@torch.no_grad()
def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    calibration: str | os.PathLike,
    images: int | None = None,
    spatial: bool = True,
) -> dict[str, Any]:
    """`resnext export --precision int8`: a QDQ ONNX file calibrated on images of a folder.

    The file is reloaded through `load_model` (ONNX Runtime), run on a batch of another size
    (and, with dynamic height and width, a larger image), and compared with eager fp32 on the
    calibration images. Returns {"images", "top1_agreement" (percent), "max_abs_diff"}.

    Args:
        checkpoint: a model file `load_model` reads (weights, not an export).
        out: the .onnx file to write.
        calibration: a folder of images, or of class folders (spread over the classes).
        images: how many calibration images (default: quantize.CALIBRATION_IMAGES).
        spatial: dynamic height and width.
    """
    from resnext.inference.quantize import CALIBRATION_IMAGES, calibration_batches, quantize_onnx

    check_suffix("onnx", out)
    model = _source_model(checkpoint)
    batches = calibration_batches(calibration, model.preprocessing, images or CALIBRATION_IMAGES)
    out = Path(out)
    try:
        quantize_onnx(model, batches, out, file_metadata(model, "int8"), spatial)
        deployed = load_model(out)
        x = batches[0]
        checks = [x[:CHECK_BATCH] if len(x) > CHECK_BATCH else torch.cat([x, x])]
        if spatial:
            checks.append(example_input(model, x.shape[-1] + CHECK_GROWTH, CHECK_BATCH))
        for c in checks:
            if deployed(c).shape != (len(c), model.spec.num_classes):
                raise ValueError(
                    f"the int8 file gave logits of the wrong shape for {tuple(c.shape)}"
                )
        ours = torch.cat([deployed(b) for b in batches])
    except (ValueError, ImportError):
        raise
    except Exception as e:  # onnxruntime's quantizer and sessions raise their own kinds
        log.debug("int8 export failed", exc_info=True)
        raise ValueError(f"int8 onnx export of {out.name} failed: {one_line(e)}") from None
    eager = torch.cat([model(b) for b in batches])
    agree = (ours.argmax(1) == eager.argmax(1)).double().mean().item()
    result = {
        "images": len(eager),
        "top1_agreement": 100 * agree,
        "max_abs_diff": (ours - eager).abs().max().item(),
    }
    log.info("%s: int8 onnx written, %s", out, result)
    return result
