"""Program files (ONNX, TorchScript, .pt2): written with resnext's metadata, read back and run.

The one place that knows these formats both ways. Writing: the graph from torch's exporters,
batch and (optionally) height and width dynamic, and the metadata (spec, class names,
preprocessing, `input` in words, precision) in ONNX `metadata_props` or, in TorchScript and
.pt2 archives, the extra file `META_FILE`. Reading: `load_exported` is the one runner of these
files: `load_model` hands them here, so `evaluate`, `predict` and the checks of `resnext export`
(fp32 and int8) all run the deployed file the same way: ONNX through ONNX Runtime, TorchScript
through `torch.jit.load`, .pt2 through `torch.export.load`.

TorchScript and .pt2 files are programs, read only when the caller trusts the file
(`trusted=True`, the CLI's `--trust-file`). Reading a .pt2 can run any Python:
torch.export.load unpickles sample inputs, weights and constants with `weights_only=False`
when the safe load fails, and parses the graph's shape expressions with sympy, which calls
`eval`. A TorchScript archive runs its own TorchScript (a class's `__setstate__`) as it loads.
No scan of the pickles could tell such a file safe, so the whole format is refused. An ONNX
file is a graph of ONNX operators that ONNX Runtime runs: no pickle, no Python, no trust needed.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnext.errors import one_line
from resnext.extras import require
from resnext.files.checkpoint import CheckpointError
from resnext.files.model_file import check_metadata
from resnext.files.runtimes import OnnxModel
from resnext.models.zoo import ModelSpec

log = logging.getLogger(__name__)

META_FILE = "resnext.json"  # the extra file of TorchScript and .pt2 archives
PROGRAMS = ("torchscript", "exported-program")  # formats whose reading can run code
ONNX_OPSET = 18  # >= 17; 18 is what torch's dynamo exporter targets natively


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
    require("onnx", "export", "onnx export")
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
        write_onnx_metadata(path, path, metadata)


def write_onnx_metadata(source: Path, out: Path, metadata: dict[str, Any]) -> None:
    """Copy the ONNX file `source` to `out` with `metadata` as its metadata_props, each value
    as JSON (None values left out)."""
    onnx = require("onnx", "export", "onnx export")
    proto = onnx.load(str(source))
    props = {k: json.dumps(v) for k, v in metadata.items() if v is not None}
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))


def export_torchscript(model: nn.Module, path: Path, metadata: dict | None = None) -> None:
    """TorchScript by scripting (no tracing: no shape baked in)."""
    extra = {META_FILE: json.dumps(metadata or {})}
    with warnings.catch_warnings():  # deprecated in torch 2.x, still asked for by C++ deployments
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path), _extra_files=extra)


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


class ExportedModel(nn.Module):
    """An exported file as a module: float32 NCHW in, logits out on the input's device.

    Carries what `load_model` attaches to every model: `spec` (None if the file records none),
    `preprocessing`, `class_names`, `source`, plus `format` and `precision` ("fp32", "int8").
    """

    def __init__(self, run: Callable[[Tensor], Tensor], fmt: str, meta: dict[str, Any]) -> None:
        super().__init__()
        # A plain attribute, not a submodule: .eval()/.to() must not reach an exported
        # program's module (it refuses train/eval) or an ONNX session; it runs on the CPU.
        self.__dict__["run"] = run
        self.format = fmt
        self.precision = meta.get("precision", "fp32")
        self.spec = ModelSpec(**meta["spec"]) if meta.get("spec") else None
        self.name = meta.get("model_name")
        self.class_names = meta.get("class_names")
        self.source = meta.get("source")

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.run(x.to("cpu", torch.float32)).float().to(x.device)


def load_exported(
    path: Path, fmt: str, trusted: bool = False
) -> tuple[ExportedModel, dict[str, Any]]:
    """The module of an exported file and its metadata; CheckpointError (one line) if the file
    is a program not `trusted`, cannot be read or carries no resnext metadata."""
    if fmt in PROGRAMS and not trusted:
        raise CheckpointError(
            f"refusing to load {path}: a {fmt} file is a program that can run code when loaded; "
            "load it only from a source you trust, with --trust-file (trusted=True)"
        )
    readers = {"onnx": _onnx, "torchscript": _torchscript, "exported-program": _program}
    try:
        run, meta = readers[fmt](path)
    except (ImportError, CheckpointError):
        raise
    except Exception as e:  # each format's reader has its own error types for damage
        log.debug("reading %s failed", path, exc_info=True)
        why = f"truncated or corrupt {fmt} file ({one_line(e)})"
        raise CheckpointError(f"cannot read {path}: {why}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: resnext metadata is a JSON {type(meta).__name__}")
    if not meta.get("preprocessing"):
        raise CheckpointError(
            f"{path} carries no resnext preprocessing metadata (write it with `resnext export`)"
        )
    try:
        check_metadata(meta)
        return ExportedModel(run, fmt, meta), meta
    except (TypeError, ValueError) as e:  # a spec ModelSpec refuses
        raise CheckpointError(f"{path}: {e}") from None


def check_runs(model: ExportedModel, path: Path) -> None:
    """Run an ONNX file once on zeros of its input's shape (one image at its own crop where a
    dimension is dynamic): ONNX Runtime checks less when it opens a file than when it runs it
    (a reshape to a size no batch can take), and the damage is then one line at load, not a
    traceback at the first batch."""
    if model.format != "onnx":
        return
    ort = require("onnxruntime", "export", "reading onnx files")
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the error comes back as the exception: no second copy
    pre, session = model.preprocessing, model.run.session
    wanted = (1, pre.channels, pre.crop, pre.crop)
    declared = session.get_inputs()[0].shape
    shape = [d if isinstance(d, int) else w for d, w in zip(declared, wanted, strict=False)]
    try:
        out = session.run(None, {model.run.input: np.zeros(shape, np.float32)}, quiet)[0]
    except Exception as e:  # ONNX Runtime's own error types
        raise CheckpointError(f"cannot run {path}: {one_line(e)}") from None
    want = [shape[0], model.spec.num_classes if model.spec else out.shape[-1]]
    if list(out.shape) != want:
        raise CheckpointError(f"{path} gives outputs of shape {list(out.shape)}, not {want}")


def _onnx(path: Path) -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    onnx = require("onnx", "export", "reading onnx files")
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: _json(p.value, path) for p in proto.metadata_props}
    # Shapes inferred through the graph must agree with the initializers: ONNX Runtime runs
    # a convolution whose weight was cut short without a word.
    onnx.checker.check_model(proto, full_check=True)
    return OnnxModel(path, "onnxruntime"), meta


def _torchscript(path: Path) -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    extra = {META_FILE: ""}
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x; still read here
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), _json(extra[META_FILE] or "{}", path)


def _program(path: Path) -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    extra = {META_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program.module(), _json(extra[META_FILE] or "{}", path)


def _json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable resnext metadata ({e})") from None
