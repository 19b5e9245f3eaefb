"""int8 post-training static quantization for x86 CPUs: a QDQ ONNX file, and PyTorch's FX flow.

`quantize_onnx` is the int8 road (`export_int8`, `optimize_for_inference(model, "int8")`): BN
folded, an fp32 ONNX export, then ONNX Runtime's static quantization in QDQ form (int8 weights
per output channel, uint8 activations per tensor with MinMax ranges seen on calibration images).
`export_int8` (`resnext export --precision int8`) fits the ranges on a sample of a folder and
judges the file, run as `evaluate` runs it, on the sample's held-out images (data/calibration.py).
ONNX Runtime and OpenVINO both run the file; OpenVINO ran it at 5.3x torchvision's eager fp32
on resnext50_32x4d at batch 32, ONNX Runtime at 2.6x, the FX flow at 4.9x (docs/performance.md).

`quantize_int8` is PyTorch's FX graph mode flow (`backend="torch"`). torch marks it deprecated
("will be removed in 2.10", still shipped in 2.14) in favour of torchao's PT2E flow, whose x86
Inductor quantizer fails on this torch (torchao 0.18, torch 2.14: "Input partition has more
than one output node" on torchvision's own resnext50_32x4d), so it is kept for comparison.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnext.data.calibration import CALIBRATION_IMAGES, calibration_split
from resnext.errors import one_line
from resnext.extras import require
from resnext.files.export import (
    CHECK_BATCH,
    CHECK_GROWTH,
    check_suffix,
    example_input,
    file_metadata,
    source_model,
)
from resnext.files.loader import load_model
from resnext.files.programs import export_onnx, write_onnx_metadata
from resnext.models.fuse import fuse_for_inference

log = logging.getLogger(__name__)

BACKEND = "x86"
# Top-1 agreement with eager fp32 on held-out images below which the export warns (README): a
# good calibration gives 97-100% on our models; 62.5% came from a grey digits model calibrated
# on photos.
LOW_AGREEMENT = 95.0
QUANTIZATION = {
    "format": "QDQ (QuantizeLinear/DequantizeLinear), onnxruntime.quantization.quantize_static",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor, MinMax ranges from calibration images",
}


class _QuietPreprocessHint(logging.Filter):
    """onnxruntime's quantizer logs "consider pre-processing" on the root logger at every call:
    its pre-processing (symbolic shape inference) is for static shapes, not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over tensor batches."""

    def __init__(self, batches: Iterable[Tensor], name: str) -> None:
        self.batches: Iterator[Tensor] = iter(batches)
        self.name = name
        self.images = 0

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.images += len(batch)
        return {self.name: batch.detach().float().cpu().numpy()}


@torch.no_grad()
def quantize_onnx(
    model: nn.Module,
    calibration: Iterable[Tensor],
    out: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    spatial: bool = True,
) -> Path:
    """Write a QDQ int8 ONNX file of `model` (batch dynamic; height and width too unless
    `spatial=False`), with `metadata` and the quantization settings in its metadata_props.

    Args:
        model: float model (not modified; BN is folded into a copy).
        calibration: preprocessed input batches (a few hundred images in all).
        out: the .onnx file to write.
        metadata: JSON-able values stored like an fp32 export's.
        spatial: dynamic height and width.
    """
    require("onnx", "export", "int8 onnx export")
    quantization = require("onnxruntime.quantization", "export", "int8 quantization")
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("calibration needs at least one batch of images")
    fused = fuse_for_inference(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        # an example batch of 2: torch.export would fix a batch dimension of 1
        example = first[:1].float().expand(2, -1, -1, -1)
        export_onnx(fused, fp32, example, dynamic=True, spatial=spatial)
        reader = _Reader(itertools.chain([first], batches), "x")
        hint = _QuietPreprocessHint()
        logging.getLogger().addFilter(hint)
        try:
            _quantize_static(quantization, fp32, int8, reader)
        finally:
            logging.getLogger().removeFilter(hint)
        info = {**QUANTIZATION, "calibration_images": reader.images}
        props = {**(metadata or {}), "precision": "int8", "quantization": info}
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_onnx_metadata(int8, out, props)
    return out


def _quantize_static(quantization: Any, fp32: Path, int8: Path, reader: _Reader) -> None:
    quantization.quantize_static(
        str(fp32),
        str(int8),
        reader,
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
    )


@torch.no_grad()
def quantize_int8(model: nn.Module, calibration: Iterable[Tensor], backend: str = BACKEND):
    """An int8 copy of `model` by PyTorch's FX flow, activation ranges from the input batches.

    Args:
        model: float model (copied, put in eval mode).
        calibration: input batches, a few hundred images in all.
        backend: quantized engine, "x86" for current Intel/AMD CPUs.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {backend!r} is not available in this torch build")
    torch.backends.quantized.engine = backend
    model = copy.deepcopy(model).eval()
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("calibration needs at least one batch of images")
    with warnings.catch_warnings():
        # The FX flow warns that it is deprecated in favour of torchao (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (first,))
        prepared(first)
        for batch in batches:
            prepared(batch)
        return convert_fx(prepared)


@torch.no_grad()
def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    calibration: str | os.PathLike,
    images: int | None = None,
    spatial: bool = True,
) -> dict[str, Any]:
    """`resnext export --precision int8`: a QDQ ONNX file calibrated on images of a folder.

    A sample of the folder is split (data/calibration.py): three quarters fit the ranges, the
    rest is held out. The file is read back by `load_model` (as `evaluate` runs it), run on a
    batch of another size (and, with dynamic height and width, a larger image), and its top-1
    is compared with eager fp32 on the held-out images; below `LOW_AGREEMENT` percent it warns.
    Returns {"images" (fitted on), "held_out", "top1_agreement" (percent, None without held-out
    images), "max_abs_diff" (logits, over every image of the sample)}.

    Args:
        checkpoint: a model file `load_model` reads (weights, not an export).
        out: the .onnx file to write.
        calibration: a folder of images, or of class folders (spread over the classes).
        images: how many images to sample (default: CALIBRATION_IMAGES).
        spatial: dynamic height and width.
    """
    check_suffix("onnx", out)
    model = source_model(checkpoint)
    fit, held = calibration_split(calibration, model.preprocessing, images or CALIBRATION_IMAGES)
    out = Path(out)
    try:
        quantize_onnx(model, fit, out, file_metadata(model, "int8"), spatial)
        deployed = load_model(out)
        _check_shapes(deployed, model, fit[0], spatial)
        ours = [torch.cat([deployed(b) for b in part]) if part else None for part in (fit, held)]
    except (ValueError, ImportError):
        raise
    except Exception as e:  # onnxruntime's quantizer and sessions raise their own kinds
        log.debug("int8 export failed", exc_info=True)
        raise ValueError(f"int8 onnx export of {out.name} failed: {one_line(e)}") from None
    eager = [torch.cat([model(b) for b in part]) if part else None for part in (fit, held)]
    result = _report(ours, eager)
    log.info("%s: int8 onnx written, %s", out, result)
    if result["top1_agreement"] is not None and result["top1_agreement"] < LOW_AGREEMENT:
        log.warning(
            "%s: int8 top-1 agrees with fp32 on only %.2f%% of %d held-out calibration images "
            "(below %g%%): calibrate on more images, or on images like the model's own inputs",
            out, result["top1_agreement"], result["held_out"], LOW_AGREEMENT,
        )  # fmt: skip
    return result


def _check_shapes(deployed: nn.Module, model: nn.Module, x: Tensor, spatial: bool) -> None:
    """ValueError unless the file gives one row of logits per image for a batch of another
    size than the export's and, with dynamic height and width, a larger image."""
    checks = [x[:CHECK_BATCH] if len(x) > CHECK_BATCH else torch.cat([x, x])]
    if spatial:
        checks.append(example_input(model, x.shape[-1] + CHECK_GROWTH, CHECK_BATCH))
    for c in checks:
        if deployed(c).shape != (len(c), model.spec.num_classes):
            raise ValueError(f"the int8 file gave logits of the wrong shape for {tuple(c.shape)}")


def _report(ours: list[Tensor | None], eager: list[Tensor | None]) -> dict[str, Any]:
    """Images fitted and held out, top-1 agreement on the held-out ones, max abs logit diff."""
    held_ours, held_eager = ours[1], eager[1]
    agree = None
    if held_eager is not None:
        agree = 100 * (held_ours.argmax(1) == held_eager.argmax(1)).double().mean().item()
    diffs = [(a - b).abs().max().item() for a, b in zip(ours, eager) if a is not None]
    return {
        "images": len(eager[0]),
        "held_out": 0 if held_eager is None else len(held_eager),
        "top1_agreement": agree,
        "max_abs_diff": max(diffs),
    }
