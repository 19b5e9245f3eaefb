"""Weight conversion between the three equivalent block forms of Figure 3 (section 3.3).

Form (c) holds, per block, `conv1` [W, in], `bn1` [W], `conv2` [W, d] with C groups, `bn2` [W],
`conv3` [out, W]. Forms (a) and (b) hold the same numbers split into C branches of width d:
`branches.i.{conv1,bn1,conv2,bn2}` take the i-th slice of W; form (a) also splits `conv3` along
its input (`branches.i.conv3`), form (b) keeps one `conv3` on the concatenation.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import Tensor

from resnext.models.model import ResNeXt

StateDict = dict[str, Tensor]

_GROUPED = re.compile(r"^(?P<block>layer\d+\.\d+\.)(?P<key>conv[123]\.weight|bn[12]\.\w+)$")
_BRANCH = re.compile(r"^(?P<block>.*\.)branches\.(?P<i>\d+)\.(?P<key>.+)$")


def _to_grouped(state: StateDict) -> StateDict:
    """Merge branches (forms a or b) into form (c)."""
    out: StateDict = {}
    parts: dict[tuple[str, str], dict[int, Tensor]] = {}
    for key, value in state.items():
        m = _BRANCH.match(key)
        if m is None:
            out[key] = value
        else:
            parts.setdefault((m["block"], m["key"]), {})[int(m["i"])] = value
    for (block, key), by_index in parts.items():
        tensors = [by_index[i] for i in sorted(by_index)]
        if key == "conv3.weight":  # form (a): C slices of the input of one 1x1 conv
            out[block + key] = torch.cat(tensors, dim=1)
        elif key.endswith("num_batches_tracked"):
            out[block + key] = tensors[0]
        else:
            out[block + key] = torch.cat(tensors, dim=0)
    return out


def _to_branches(state: StateDict, cardinality: int, form: str) -> StateDict:
    """Split form (c) into C branches (form a or b)."""
    out: StateDict = {}
    for key, value in state.items():
        m = _GROUPED.match(key)
        if m is None or (m["key"] == "conv3.weight" and form == "b"):
            out[key] = value
            continue
        local = m["key"]
        pieces = (
            [value] * cardinality
            if local.endswith("num_batches_tracked")
            else value.chunk(cardinality, dim=1 if local == "conv3.weight" else 0)
        )
        for i, piece in enumerate(pieces):
            out[f"{m['block']}branches.{i}.{local}"] = piece.clone()
    return out


def convert_state_dict(state: StateDict, cardinality: int, form: str) -> StateDict:
    """Pure mapping of a ResNeXt state_dict in any form to `form` ("a", "b" or "c")."""
    grouped = _to_grouped(state)
    return grouped if form == "c" else _to_branches(grouped, cardinality, form)


def convert_form(model: ResNeXt, form: str) -> ResNeXt:
    """A new model of the given form that computes the same function as `model`."""
    spec = replace(model.spec, form=form)  # validates `form`
    if spec.block == "basic":
        raise ValueError("forms apply to bottleneck blocks; basic-block models have one form")
    param = next(model.parameters())
    with torch.device("meta"):
        target = ResNeXt(spec)
    state = {
        k: v.clone()
        for k, v in convert_state_dict(model.state_dict(), spec.cardinality, form).items()
    }
    target.load_state_dict(state, strict=True, assign=True)
    target.to(device=param.device)
    target.train(model.training)
    if hasattr(model, "name"):
        target.name = model.name
    return target
