"""Files `resnext export` wrote (ONNX, TorchScript, .pt2), run by the tool that reads their format.

`load_model` hands them here, so `evaluate` and `predict` report what the deployed file does:
ONNX through ONNX Runtime, TorchScript through `torch.jit.load`, .pt2 through
`torch.export.load`, each with the spec, class names and preprocessing in the file's own
metadata.

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
from resnext.models.zoo import ModelSpec

log = logging.getLogger(__name__)

META_FILE = "resnext.json"  # the extra file of TorchScript and .pt2 archives (files/export.py)
PROGRAMS = ("torchscript", "exported-program")  # formats whose reading can run code


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
    from resnext.inference.runtimes import OnnxModel

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
