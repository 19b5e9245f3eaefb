"""Export to ONNX, TorchScript, torch.export programs and safetensors, each checked against eager.

Every format is reloaded after writing and run on a batch of a different size than the one used
for export, so a graph that silently fixed the batch dimension fails here, not in deployment.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from resnext.files.weights import checkpoint_metadata, load_model_file, save_safetensors
from resnext.models.model import ResNeXt

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript", "exported-program", "safetensors"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program", "safetensors")
ONNX_OPSET = 18  # >= 17 (issue 5); 18 is what torch's dynamo exporter targets natively
EXPORT_BATCH, CHECK_BATCH = 2, 3  # export with one batch size, verify with another


def input_size(model: ResNeXt, preprocessing: dict | None) -> int:
    """The square input side: the checkpoint's crop, else 224 (ImageNet) or 32 (CIFAR)."""
    if preprocessing and preprocessing.get("crop"):
        return int(preprocessing["crop"])
    return 224 if model.spec.template == "imagenet" else 32


def example_input(model: ResNeXt, size: int, batch: int, seed: int = 0) -> Tensor:
    """A reproducible random batch in the model's input shape."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.spec.in_channels, size, size, generator=g)


def _batch_dim(dynamic: bool) -> dict | None:
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic else None


def export_onnx(model: nn.Module, path: Path, example: Tensor, dynamic: bool = True) -> None:
    """ONNX (opset 18) via torch.export, input "x" and output "logits", batch dynamic if asked."""
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes=_batch_dim(dynamic),
        external_data=False,
        verbose=False,
    )


def run_onnx(path: Path, x: Tensor) -> Tensor:
    """Outputs of an ONNX file under onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def export_torchscript(model: nn.Module, path: Path) -> None:
    """TorchScript by scripting (no tracing: no shape baked in)."""
    with warnings.catch_warnings():  # deprecated in torch 2.x, still asked for by C++ deployments
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))


def run_torchscript(path: Path, x: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")(x)


def export_program(model: nn.Module, path: Path, example: Tensor, dynamic: bool = True) -> None:
    """A torch.export ExportedProgram (.pt2), loadable with `torch.export.load`."""
    program = torch.export.export(model, (example,), dynamic_shapes=_batch_dim(dynamic))
    torch.export.save(program, str(path))


def run_program(path: Path, x: Tensor) -> Tensor:
    return torch.export.load(str(path)).module()(x)


@torch.no_grad()
def export_model(
    model: ResNeXt,
    fmt: str,
    out: str | os.PathLike,
    size: int,
    dynamic: bool = True,
    metadata: dict[str, Any] | None = None,
) -> float:
    """Write `model` in format `fmt` to `out`, reload it, and return the max abs diff to eager.

    Args:
        model: the network (put in eval mode here).
        fmt: "onnx", "torchscript", "exported-program" or "safetensors".
        out: output path.
        size: square input side for the example and check batches.
        dynamic: dynamic batch dimension (ONNX and exported programs; TorchScript always is).
        metadata: for safetensors, the JSON metadata stored next to the weights.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "exported-program" and out.suffix != ".pt2":
        raise ValueError(f"exported programs are .pt2 files (torch.export.load), got {out.name}")
    if fmt == "safetensors" and out.suffix != ".safetensors":
        raise ValueError(f"safetensors files end in .safetensors, got {out.name}")
    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    example = example_input(model, size, EXPORT_BATCH)
    check = example_input(model, size, CHECK_BATCH if dynamic else EXPORT_BATCH, seed=1)
    if fmt == "onnx":
        export_onnx(model, out, example, dynamic)
        got = run_onnx(out, check)
    elif fmt == "torchscript":
        export_torchscript(model, out)
        got = run_torchscript(out, check)
    elif fmt == "exported-program":
        export_program(model, out, example, dynamic)
        got = run_program(out, check)
    else:
        save_safetensors(out, model.state_dict(), metadata)
        twin, _ = load_model_file(out) if metadata and "spec" in metadata else (None, None)
        got = (twin or model)(check)
    diff = (got - model(check)).abs().max().item()
    log.info("%s: %s written, max abs diff to eager %.3g", out, fmt, diff)
    return diff


def export_checkpoint(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    dynamic: bool = True,
    size: int | None = None,
) -> float:
    """`resnext export`: the checkpoint's model in another format, verified against eager."""
    model, ckpt = load_model_file(checkpoint)
    side = size or input_size(model, ckpt.get("preprocessing"))
    return export_model(model, fmt, out, side, dynamic, checkpoint_metadata(ckpt))
