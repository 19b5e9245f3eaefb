"""Optional packages: imported when a feature needs them, or a one-line hint naming the extra.

    ort = require("onnxruntime", "export")   # the module, or MissingExtra:
    # "onnxruntime is needed here, in the 'export' extra: pip install 'resnext[export]'"

`MissingExtra` is an ImportError (code that already catches ImportError keeps working); the
`resnext` command reports it in one line with exit status 2, like any other user mistake.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional package a feature needs is not installed."""


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtra naming the extra `resnext[extra]` that provides it.

    Args:
        module: the module to import, e.g. "onnx" or "safetensors.torch".
        extra: the pyproject extra that installs it, e.g. "export".
        feature: what needs it, for the message (default: the module's name).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        what = feature or module.split(".")[0]
        raise MissingExtra(
            f"{what} needs the '{extra}' extra: pip install 'resnext[{extra}]'"
        ) from None
