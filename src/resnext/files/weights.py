"""State dicts into models: unwrapping, foreign names, strict loading with a report.

Files are read by files/model_file.py (the one reader, which never runs code from a file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from resnext.files.checkpoint import CheckpointError
from resnext.files.interop import is_pycls, pycls_to_torchvision
from resnext.files.model_file import read_model_file
from resnext.models.forms import convert_state_dict
from resnext.models.model import ResNeXt

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

# Containers other projects wrap a state_dict in, in order of preference: the raw weights
# (resnext, torchvision references, timm, pycls's "model_state"), then EMA weights.
WRAPPER_KEYS = (
    "model",
    "state_dict",
    "model_state",
    "module",
    "model_ema",
    "state_dict_ema",
    "ema",
)
# Prefixes added by DDP (`module.`) and torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsError(CheckpointError):
    """Weights that cannot be found in a file or do not fit a model."""


@dataclass
class LoadReport:
    """What did not match when loading weights into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        """One line naming the first `limit` keys of each kind."""

        def names(items: list[str]) -> str:
            more = f", and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({names(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({names(self.unexpected)})")
        if self.mismatched:
            shapes = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatch ({names(shapes)})")
        return "; ".join(parts) if parts else "all keys match"


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())
    )


def unwrap_state_dict(obj: Mapping[str, Any], key: str | None = None) -> StateDict:
    """The state_dict inside the usual wrappers, with DDP/compile prefixes removed.

    Args:
        obj: a bare state_dict or a dict holding one under `model`, `state_dict`,
            `model_state` (pycls), `model_ema`, ...
        key: take exactly this entry instead of searching the wrapper keys.
    """
    if key is not None:
        if key not in obj:
            raise WeightsError(
                f"no entry {key!r} in the file; it has {sorted(map(str, obj))[:10]}"
                + (f" (and {len(obj) - 10} more)" if len(obj) > 10 else "")
            )
        obj = obj[key]
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise WeightsError(f"expected a state_dict, found a {type(obj).__name__}")
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise WeightsError(
                f"no state_dict found: top-level keys are {sorted(map(str, obj))[:10]}; "
                f"expected tensors or one of {list(WRAPPER_KEYS)}"
            )
        obj = obj[inner]
    # torch.optim.swa_utils.AveragedModel adds a counter next to the wrapped module's weights.
    state = {k: v for k, v in obj.items() if k not in ("n_averaged", "module.n_averaged")}
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def compare_state_dicts(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> LoadReport:
    """Keys missing from `source`, keys `target` lacks, and keys whose shapes differ."""
    return LoadReport(
        missing=[k for k in target if k not in source],
        unexpected=[k for k in source if k not in target],
        mismatched=[
            (k, tuple(v.shape), tuple(target[k].shape))
            for k, v in source.items()
            if k in target and v.shape != target[k].shape
        ],
    )


def to_model_layout(state: StateDict, model: nn.Module) -> StateDict:
    """Map known foreign names (pycls) to torchvision's, then to the model's block form."""
    if is_pycls(state):
        state = pycls_to_torchvision(state)
    if isinstance(model, ResNeXt) and model.spec.block == "bottleneck":
        state = convert_state_dict(state, model.spec.cardinality, model.spec.form)
    return state


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
    key: str | None = None,
) -> LoadReport:
    """Load weights from a file or dict into `model`, strictly by default.

    Args:
        model: the network to fill (a ResNeXt in any form, or any nn.Module).
        source: a .pt/.pth/.safetensors path, a bare state_dict, or a dict wrapping one.
        strict: raise WeightsError unless every key and shape matches; when False, load what
            matches, log the rest and return it in the report.
        key: the wrapper entry to use (e.g. "model_ema"); default: the first usual one found.
    """
    where = str(source) if isinstance(source, (str, os.PathLike)) else "state_dict"
    obj = read_model_file(source) if isinstance(source, (str, os.PathLike)) else source
    state = to_model_layout(unwrap_state_dict(obj, key), model)
    target = model.state_dict()
    report = compare_state_dicts(state, target)
    if not report.ok:
        if strict:
            raise WeightsError(f"{where}: weights do not fit the model: {report.summary()}")
        log.warning("%s: loading partially: %s", where, report.summary())
    bad = {k for k, _, _ in report.mismatched}
    fitting = {k: v for k, v in state.items() if k in target and k not in bad}
    on_meta = any(t.is_meta for t in target.values())
    model.load_state_dict(fitting, strict=False, assign=on_meta)
    return report


def infer_num_classes(state: Mapping[str, Tensor]) -> int | None:
    """Outputs of the classifier in a torchvision-named state_dict, if it has one."""
    fc = state.get("fc.weight")
    return int(fc.shape[0]) if fc is not None else None
