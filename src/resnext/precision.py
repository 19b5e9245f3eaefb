"""Precision names as the recipes and commands spell them, and the torch dtype of each."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision where asked: the single autocast of training and bench (fp32 disables it)."""
    return torch.autocast(device.type, DTYPES[precision], enabled=precision != "fp32")
