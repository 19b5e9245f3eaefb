"""Fast inference paths chosen by measurement: BN folded, channels_last, compile, ONNX Runtime,
and int8 (a QDQ ONNX file run by OpenVINO or ONNX Runtime)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from resnext.models.fuse import fuse_for_inference
from resnext.precision import DTYPES as _DTYPES

log = logging.getLogger(__name__)


class InferenceModel(nn.Module):
    """A frozen model behind an input adapter: layout and dtype in, float32 logits out."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(dtype=self.dtype).contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            return self.inner(x).float()


class OnnxRuntimeModel(nn.Module):
    """A BN-folded fp32 model run by ONNX Runtime's CPU engine: float32 NCHW in, logits out.

    The model is exported once per input image size (batch dynamic, height and width fixed:
    1.49x against torchvision eager for resnext50_32x4d at batch 32, against 1.43x for one
    export with dynamic height and width, measured in one process), at the first call with it.
    """

    def __init__(self, fused: nn.Module, threads: int) -> None:
        super().__init__()
        import onnxruntime  # noqa: F401  (fail here, not at the first call, if it is missing)

        self.fused, self.threads = fused, threads
        self.sessions: dict[tuple[int, ...], Any] = {}

    def _session(self, shape: tuple[int, ...]) -> Any:
        import tempfile
        from pathlib import Path

        from resnext.files.programs import export_onnx
        from resnext.files.runtimes import ort_session

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            # one session per image size (see above), so the graph's height and width stay fixed
            export_onnx(self.fused, path, torch.zeros(2, *shape), spatial=False)
            return ort_session(path.read_bytes(), self.threads)

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        shape = tuple(x.shape[1:])
        if shape not in self.sessions:
            self.sessions[shape] = self._session(shape)
        return torch.from_numpy(self.sessions[shape].run(None, {"x": x.numpy()})[0])


BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _pick_backend(model: nn.Module, precision: str) -> str:
    """int8: OpenVINO where installed, else ONNX Runtime (both run the same QDQ file; OpenVINO
    2.1x faster on resnext50_32x4d at batch 32 here). fp32 on the CPU: ONNX Runtime when it is installed
    (fastest here, docs/performance.md); PyTorch (torch.compile) otherwise: bf16/fp16, GPUs,
    or no onnxruntime."""
    if precision == "int8":
        return "openvino" if _installed("openvino") else "onnxruntime"
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return (
        "onnxruntime" if precision == "fp32" and on_cpu and _installed("onnxruntime") else "torch"
    )


def _int8(model: nn.Module, calibration: Iterable[Tensor] | None, backend: str) -> nn.Module:
    """The calibrated int8 model: PyTorch's FX flow ("torch"), or the QDQ ONNX file that
    `resnext export --precision int8` writes, run by OpenVINO or ONNX Runtime."""
    import tempfile
    from pathlib import Path

    from resnext.files.runtimes import OnnxModel
    from resnext.inference.quantize import quantize_int8, quantize_onnx

    if calibration is None:
        raise ValueError("int8 needs calibration: batches of preprocessed images")
    if backend == "torch":
        return quantize_int8(model, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        path = quantize_onnx(model, calibration, Path(tmp) / "int8.onnx")
        return OnnxModel(path, backend, torch.get_num_threads())


def optimize_for_inference(
    model: nn.Module,
    precision: str = "fp32",
    compile: bool = True,
    channels_last: bool = True,
    backend: str = "auto",
    calibration: Iterable[Tensor] | None = None,
) -> nn.Module:
    """A copy of `model` for fast inference, same outputs as eval mode within the precision.

    BN is always folded into the convs. backend="torch": channels_last and torch.compile with
    freezing (weights become constants the compiler can pre-pack); precision "bf16" casts
    weights and activations to bfloat16 (fast on CPUs with avx512_bf16 or AMX, and on GPUs).
    backend="onnxruntime": the BN-folded fp32 model exported to ONNX and run by ONNX Runtime's
    CPU engine (needs the `export` extra; fp32 only; `compile` and `channels_last` do not apply,
    ONNX Runtime picks its own blocked layout). backend="auto" (default) takes ONNX Runtime for
    fp32 on the CPU when it is installed, the fastest fp32 path measured here, else "torch".
    precision "int8" (CPU): post-training static quantization, activation ranges from
    `calibration` (batches of preprocessed images, a few hundred in all); the QDQ ONNX file of
    `resnext export --precision int8`, run by OpenVINO ("auto" where the `openvino` extra is
    installed, the fastest here) or ONNX Runtime; backend="torch" takes PyTorch's deprecated FX
    flow instead. float32 logits out. The original model is not modified.
    """
    if precision not in (*_DTYPES, "int8"):
        raise ValueError(
            f"precision must be one of {sorted(_DTYPES) + ['int8']}, got {precision!r}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = _pick_backend(model, precision)
    if precision == "int8":
        return _int8(model, calibration, backend)
    if backend == "openvino":
        raise ValueError("the openvino backend runs int8 only")
    fused = fuse_for_inference(model)
    if backend == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 only, got {precision!r}")
        return OnnxRuntimeModel(fused, torch.get_num_threads())
    fused = fused.to(dtype=_DTYPES[precision])
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    inner: nn.Module = fused
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # read when the graph is compiled, at the first call
        inner = torch.compile(fused)
    return InferenceModel(inner, _DTYPES[precision], channels_last)
