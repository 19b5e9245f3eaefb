"""int8 post-training static quantization for x86 CPUs: a QDQ ONNX file, and PyTorch's FX flow.

`quantize_onnx` is the int8 road (export, `optimize_for_inference(model, "int8")`): BN folded,
an fp32 ONNX export, then ONNX Runtime's static quantization in QDQ form (int8 weights per
output channel, uint8 activations per tensor with MinMax ranges seen on calibration images).
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
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnext.data.images import batched_images, list_images
from resnext.data.preprocessing import Preprocessing
from resnext.extras import require

log = logging.getLogger(__name__)

BACKEND = "x86"
CALIBRATION_IMAGES = 256  # ranges settle well before this (512 gave the same top-1 on CIFAR)
CALIBRATION_BATCH = 32
QUANTIZATION = {
    "format": "QDQ (QuantizeLinear/DequantizeLinear), onnxruntime.quantization.quantize_static",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor, MinMax ranges from calibration images",
}


def calibration_batches(
    folder: str | os.PathLike,
    preprocessing: Preprocessing,
    limit: int = CALIBRATION_IMAGES,
    batch_size: int = CALIBRATION_BATCH,
) -> list[Tensor]:
    """Up to `limit` images of `folder` through `preprocessing`, in batches.

    A folder of class folders gives a seeded choice spread evenly over the classes
    (`ImageSet.subset`); a plain folder, images at even steps through its sorted files.
    Unreadable files are skipped with a warning.
    """
    from resnext.data import folders
    from resnext.data.bad_images import BadImages
    from resnext.data.datasets import load_files

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"calibration folder {root} does not exist")
    if limit < 1:
        raise ValueError(f"--calibration-images must be positive, got {limit}")
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        bad = BadImages()
        scan = folders.scan(str(root.parent), root.name, bad)
        data = load_files(scan, root.name, bad, "no", None).subset(limit)
        paths = [Path(data.name(i)) for i in range(len(data))]
    else:
        found = list_images([root])
        paths = found[:: max(1, len(found) // limit)][:limit]
    batches = []
    for _, batch, failed in batched_images(
        paths, preprocessing.transform(), preprocessing.channels, batch_size
    ):
        for path, why in failed.items():
            log.warning("calibration: skipping %s (%s)", path, why)
        if batch is not None:
            batches.append(batch)
    if not batches:
        raise ValueError(f"no readable calibration images in {root}")
    return batches


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
    from resnext.files.export import export_onnx
    from resnext.models.fuse import fuse_for_inference

    onnx = require("onnx", "export", "int8 onnx export")
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
        proto = onnx.load(str(int8))
    info = {**QUANTIZATION, "calibration_images": reader.images}
    props = {**(metadata or {}), "precision": "int8", "quantization": info}
    onnx.helper.set_model_props(
        proto, {k: json.dumps(v) for k, v in props.items() if v is not None}
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
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
