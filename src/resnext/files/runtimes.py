"""ONNX files run by ONNX Runtime or OpenVINO on the CPU, as PyTorch modules.

float32 NCHW in, float32 logits out on the input's device. The runner of exported .onnx files
(files/programs.py, behind `load_model`) uses `OnnxModel` with ONNX Runtime, so what `evaluate`,
`predict` and export's checks report is what the file does; `optimize_for_inference(model,
"int8")` runs its QDQ file through OpenVINO where it is installed: the fastest int8 path
measured here (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnext.extras import require

RUNTIMES = ("onnxruntime", "openvino")


def ort_session(model: bytes | str, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation on; `threads` intra-op threads
    (None: ONNX Runtime's default, one per core)."""
    ort = require("onnxruntime", "export", "running onnx files")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class _SignalStack(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Give the calling thread back its alternate signal stack after the block.

    OpenVINO's CPU plugin (2025-2026 releases) points the thread that compiles a model at a
    signal stack of its own and does not always point it back; once the plugin frees that
    memory, the next signal the process handles (SIGCHLD from a DataLoader worker, Ctrl-C) is
    delivered onto freed memory and the kernel kills the process with SIGSEGV. Seen here as a
    test run dying in a later, unrelated test.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    saved = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


class OnnxModel(nn.Module):
    """One ONNX file under `runtime`. ONNX Runtime keeps one session for every input shape;
    OpenVINO compiles the model once per input shape, with that shape fixed, at its first call."""

    def __init__(
        self, path: str | os.PathLike, runtime: str = "onnxruntime", threads: int | None = None
    ) -> None:
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
        self.runtime, self.threads = runtime, threads
        self.compiled: dict[tuple[int, ...], Any] = {}
        if runtime == "onnxruntime":
            self.session = ort_session(str(path), threads)
            self.input = self.session.get_inputs()[0].name
        else:
            ov = require("openvino", "openvino", "the openvino runtime")
            self.core = ov.Core()
            self.graph = self.core.read_model(str(path))  # read now: the file may be temporary

    def _openvino(self, shape: tuple[int, ...]) -> Any:
        if shape not in self.compiled:
            self.graph.reshape(list(shape))
            config = {"PERFORMANCE_HINT": "LATENCY"}
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = self.threads
            with signal_stack_kept():
                compiled = self.core.compile_model(self.graph, "CPU", config)
            self.compiled[shape] = compiled.create_infer_request()
        return self.compiled[shape]

    def forward(self, x: Tensor) -> Tensor:
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.runtime == "onnxruntime":
            out = self.session.run(None, {self.input: a})[0]
        else:
            out = self._openvino(tuple(a.shape)).infer({0: a})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32)).to(x.device)
