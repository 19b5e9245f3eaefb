"""Fast paths chosen by measurement (issue 6): the allocator setting and optimize_for_inference."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from resnext.fuse import fuse_for_inference

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_MMAP_MAX_DEFAULT = 65536
_GLIBC_TRIM_DEFAULT = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def tune_allocator(enable: bool = True) -> bool:
    """Keep freed activations in glibc's heap instead of unmapping them after every step.

    With glibc's defaults every large activation is a fresh mmap that page-faults on first touch
    (issue 6 measured 80 s of system time against 230 s user for one eager run); this is the
    runtime equivalent of MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>, applied with mallopt
    so that no re-exec is needed. Costs about 30% more peak memory. Returns True if applied.
    `enable=False` restores glibc's defaults. The `resnext` command calls this unless
    RESNEXT_TUNE_MALLOC=0.
    """
    libc = _libc()
    if libc is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if enable else (_GLIBC_MMAP_MAX_DEFAULT, _GLIBC_TRIM_DEFAULT)
    ok = bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    log.debug("glibc allocator tuning %s: %s", "on" if enable else "off", ok)
    return ok


def allocator_tuning_wanted() -> bool:
    """The default, unless the user turned it off with RESNEXT_TUNE_MALLOC=0."""
    return os.environ.get("RESNEXT_TUNE_MALLOC", "1") != "0"


class MergedGroupsConv2d(nn.Conv2d):
    """A grouped conv that runs as `merge` times fewer, wider groups with a block-diagonal weight.

    The function, the outputs and the gradients are those of the grouped conv (the off-diagonal
    blocks are exact zeros and receive no gradient); only the kernel changes. Very narrow groups
    are slow in oneDNN on the CPU, the weight gradient above all: a training step of the
    study's C = 8 model (3-channel groups in its first stage) runs 1.18-1.21x faster with them
    merged in pairs, although that layer does twice the multiply-adds (docs/performance.md).
    Parameters, state_dict and `groups` stay those of the original layer.
    """

    merge: int = 1

    def forward(self, x: Tensor) -> Tensor:
        weight = block_diagonal(self.weight, self.groups, self.merge)
        groups = self.groups // self.merge
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, groups)


def block_diagonal(weight: Tensor, groups: int, merge: int) -> Tensor:
    """Grouped weight (out, in/groups, kh, kw) -> (out, merge*in/groups, kh, kw) for groups/merge
    groups: each output channel keeps its own input slice and sees zeros for its merged
    neighbours'. A multiply by an identity mask: exact, and differentiable."""
    if merge == 1:
        return weight
    out, width, kh, kw = weight.shape
    per = out // groups  # outputs per original group
    blocks = weight.reshape(groups // merge, merge, per, 1, width, kh, kw)
    eye = torch.eye(merge, dtype=weight.dtype, device=weight.device)
    mask = eye.reshape(1, merge, 1, merge, 1, 1, 1)
    return (blocks * mask).reshape(out, merge * width, kh, kw)


def merge_factor(conv: nn.Conv2d, min_width: int) -> int:
    """Smallest power-of-two merge that gives groups of at least `min_width` input channels
    (1 for depthwise convs, which oneDNN has its own kernels for)."""
    merge, width = 1, conv.in_channels // conv.groups
    if width == 1:
        return 1
    while width * merge < min_width and conv.groups % (2 * merge) == 0:
        merge *= 2
    return merge


def merge_small_groups(model: nn.Module, min_width: int = 4) -> int:
    """Run every grouped conv with fewer than `min_width` channels per group as merged groups
    (MergedGroupsConv2d, in place: same parameters and state_dict). Returns how many changed.
    `min_width=4` is the rule measured on a 2-core AVX2 CPU: 3-channel groups gained 1.2x per
    training step, ResNeXt-50's 4-channel groups nothing measurable (0.98x, 1.02x), so they
    stay. The layer's class is swapped in place, so parameters and hooks are kept; the trainer
    applies it on the CPU only."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and module.groups > 1 and module.padding_mode == "zeros":
            merge = merge_factor(module, min_width)
            if merge > 1:
                module.__class__ = MergedGroupsConv2d
                module.merge = merge
                changed += 1
    return changed


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

        import onnxruntime as ort

        from resnext.export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(self.fused, path, torch.zeros(2, *shape))
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            return ort.InferenceSession(
                path.read_bytes(), options, providers=["CPUExecutionProvider"]
            )

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        shape = tuple(x.shape[1:])
        if shape not in self.sessions:
            self.sessions[shape] = self._session(shape)
        return torch.from_numpy(self.sessions[shape].run(None, {"x": x.numpy()})[0])


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("auto", "torch", "onnxruntime")


def _pick_backend(model: nn.Module, precision: str) -> str:
    """ONNX Runtime for fp32 on the CPU when it is installed (fastest here, docs/performance.md);
    PyTorch (torch.compile) otherwise: bf16/fp16, GPUs, or no onnxruntime."""
    import importlib.util

    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    return "onnxruntime" if precision == "fp32" and on_cpu and has_ort else "torch"


def optimize_for_inference(
    model: nn.Module,
    precision: str = "fp32",
    compile: bool = True,
    channels_last: bool = True,
    backend: str = "auto",
) -> nn.Module:
    """A copy of `model` for fast inference, same outputs as eval mode within the precision.

    BN is always folded into the convs. backend="torch": channels_last and torch.compile with
    freezing (weights become constants the compiler can pre-pack); precision "bf16" casts
    weights and activations to bfloat16 (fast on CPUs with avx512_bf16 or AMX, and on GPUs).
    backend="onnxruntime": the BN-folded fp32 model exported to ONNX and run by ONNX Runtime's
    CPU engine (needs the `export` extra; fp32 only; `compile` and `channels_last` do not apply,
    ONNX Runtime picks its own blocked layout). backend="auto" (default) takes ONNX Runtime for
    fp32 on the CPU when it is installed, the fastest fp32 path measured here, else "torch".
    The original model is not modified.
    """
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = _pick_backend(model, precision)
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
