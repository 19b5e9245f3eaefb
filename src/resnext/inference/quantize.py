"""int8 post-training static quantization for x86 CPUs, with PyTorch's own FX graph-mode flow.

torch 2.14 still ships `torch.ao.quantization.quantize_fx` with the "x86" (fbgemm + oneDNN)
backend; its pt2e successor moved to the separate torchao package, which we do not depend on.
Conv, BN and ReLU are fused by the flow itself; weights are per-channel int8, activations uint8
with ranges observed on calibration images.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

BACKEND = "x86"


@torch.no_grad()
def quantize_int8(model: nn.Module, calibration: Iterable[Tensor], backend: str = BACKEND):
    """An int8 copy of `model`, with activation ranges calibrated on the given input batches.

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
        # The FX flow warns that it is deprecated in favour of torchao; it is still the one in torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (first,))
        prepared(first)
        for batch in batches:
            prepared(batch)
        return convert_fx(prepared)
