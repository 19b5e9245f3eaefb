"""The one reader and writer of model files: .pt/.pth/.bin (torch) and .safetensors.

`file_kind` also tells apart the files `resnext export` writes (ONNX, TorchScript, .pt2): they
hold a program, not weights, and `load_model` runs them through files/programs.py.

Nothing here executes code from a file: torch files are read with `weights_only=True`,
safetensors files hold tensors and a JSON string only. What a file holds comes back as a
checkpoint-like dict, whatever the format (`load_model` in files/loader.py builds the model):

    model           the weights (a state_dict, possibly wrapped, as the file stores it)
    spec            ModelSpec.to_dict(), if the file is ours
    model_name, class_names, preprocessing, source, config, metrics, ...   (ours)
    epoch, step, optimizer, scheduler, scaler, ema, rng   training state (trainer's .pt files)

Training's `last.pt`/`best.pt` are written by files/checkpoint.py's atomic `save_checkpoint`
(format "resnext-checkpoint/1") and read here like every other file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnext.atomic import write_atomic
from resnext.errors import one_line
from resnext.extras import require
from resnext.files.checkpoint import CheckpointError, save_checkpoint
from resnext.models.zoo import ModelSpec

SAFETENSORS_META_KEY = "resnext"
# safetensors refuses a header over 100 MB (its MAX_HEADER_SIZE), so no such file has one.
SAFETENSORS_MAX_HEADER = 100_000_000
# The keys of a checkpoint that describe the model (JSON-able, no tensors, no training state).
METADATA_KEYS = (
    "spec",
    "model_name",
    "class_names",
    "preprocessing",
    "config",
    "metrics",
    "source",
)


def resolve(source: str | os.PathLike) -> Path:
    """The local file a model source names. The one hook for other kinds of sources.

    Existing files, and (files/sources.py) URLs, "torchvision:MODEL[.TAG]" and
    "timm:MODEL.TAG", fetched into torch.hub's cache; anything else raises ValueError.
    """
    from resnext.files.sources import fetch, is_remote  # lazy: keeps urllib off the import path

    if is_remote(source) and not Path(source).exists():
        return fetch(source)
    path = Path(source)
    _check_regular(path)
    return path


def _check_regular(path: Path) -> None:
    """A missing path, a folder and a device or pipe (/dev/null) each get their own line."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a model file")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket)")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (no such model file)")


def read_model_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Everything a model file holds, as a dict, read without running code from it.

    A bare state_dict comes back as it is (a dict of tensors); a safetensors file as
    `{"model": tensors, **our metadata}`. Raises CheckpointError (a ValueError) with one line
    naming the file and why for a missing, empty, truncated, foreign or unsafe file.
    """
    path = Path(path)
    _check_regular(path)
    kind = file_kind(path)
    if kind in EXPORTED:
        raise CheckpointError(
            f"{path} is an exported {kind} file, not weights: evaluate and predict run it; "
            "other commands need the checkpoint it was exported from"
        )
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind is None:
        raise CheckpointError(
            f"{path} is not a model file (neither a PyTorch nor a safetensors file)"
        )
    try:
        # An open file, not the path: torch.load hands any path named *.safetensors to safetensors.
        with open(path, "rb") as f:
            obj = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only unpickler refused something
        if not _pickles_whole(path):  # a torn stream, not an unsafe object
            raise CheckpointError(f"cannot read {path}: truncated or corrupt") from None
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, "
            "and unpickling them could run code"
        ) from None
    except Exception as e:  # a torn legacy file also raises IndexError, struct.error, ...
        reason = one_line(e).split(". ")[0]
        raise CheckpointError(f"cannot read {path}: truncated or corrupt ({reason})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not weights or a checkpoint")
    return obj


EXPORTED = ("onnx", "torchscript", "exported-program")


def file_kind(path: Path) -> str | None:
    """ "torch" (zip or legacy pickle), "safetensors", "torchscript" or "exported-program" (zip
    archives holding code/ or archive_format), from the first bytes and the archive's names,
    whatever the suffix; "onnx" by suffix only (a protobuf has no signature); else None."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise CheckpointError(f"{path} is empty, not a model file")
    if head.startswith(b"PK"):
        return _archive_kind(path)
    if head[:1] == b"\x80":  # pickle protocol 2+, as torch.save's legacy format starts
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header. A whole or a
    # torn file alike (safetensors names the damage); text bytes make lengths of ~2**60.
    size = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and 0 < size <= SAFETENSORS_MAX_HEADER:
        return "safetensors"
    # A damaged .safetensors file goes to safetensors too, to say what is wrong with it.
    return {".onnx": "onnx", ".safetensors": "safetensors"}.get(path.suffix)


def _archive_kind(path: Path) -> str:
    """A zip's kind from its member names: torch.jit.save writes `<name>/code/`, torch.export.save
    `<name>/archive_format`, torch.save neither (a damaged zip is left to torch.load to name)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "torch"
    except NotImplementedError as e:  # "zip file version 9.9": a feature no zip reader here has
        raise CheckpointError(f"cannot read {path}: unsupported zip archive ({e})") from None
    except UnicodeDecodeError as e:  # flagged UTF-8, and not
        raise CheckpointError(
            f"cannot read {path}: a zip member name is not UTF-8 (byte {e.start}: {e.reason})"
        ) from None
    tails = {n.split("/", 1)[-1] for n in names}
    if "archive_format" in tails:
        return "exported-program"
    if any(t.startswith("code/") for t in tails):
        return "torchscript"
    return "torch"


def _pickles_whole(path: Path) -> bool:
    """Whether a file that torch's weights-only unpickler refused is whole: a zip (torch's zip
    reader checked it), or pickles that parse to their STOP (torch.save's legacy format is five:
    magic number, protocol, system info, the object, storage keys). pickletools runs nothing."""
    try:
        if zipfile.is_zipfile(path):
            return True
    except zipfile.BadZipFile:  # a zip64 locator of several disks: no whole zip of ours
        return False
    try:
        with open(path, "rb") as f:
            for _ in range(5):
                if not f.peek(1):
                    break
                for _ in pickletools.genops(f):
                    pass
    except Exception:  # pickletools raises ValueError, struct.error, ... on a torn stream
        return False
    return True


def _read_safetensors(path: Path) -> dict[str, Any]:
    safe_open = require("safetensors", "export", "reading safetensors files").safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(
            f"cannot read {path}: truncated or corrupt safetensors file ({one_line(e)})"
        ) from None
    try:
        extra = json.loads(meta[SAFETENSORS_META_KEY]) if SAFETENSORS_META_KEY in meta else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable resnext metadata ({e})") from None
    if not isinstance(extra, dict):
        kind = type(extra).__name__
        raise CheckpointError(f"{path}: resnext metadata is a JSON {kind}, not an object")
    return {**extra, "model": tensors}


# What each metadata field of our files holds when it is there (None: not recorded).
METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "spec": (dict,),
    "model_name": (str,),
    "class_names": (list, tuple),
    "preprocessing": (dict,),
    "source": (dict, str),
    "config": (dict,),
    "metrics": (dict,),
    "precision": (str,),
    "input": (str,),
}
SPEC_KEYS = frozenset(f.name for f in dataclasses.fields(ModelSpec))


def check_metadata(meta: Mapping[str, Any]) -> None:
    """ValueError naming the field if our metadata has a value of the wrong type or a spec key
    ModelSpec does not know (a damaged or hand-edited file), before anything builds on it."""
    for key, kinds in METADATA_TYPES.items():
        value = meta.get(key)
        if value is not None and not isinstance(value, kinds):
            want = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"metadata {key} must be a {want}, not {type(value).__name__}")
    names = meta.get("class_names") or ()
    if not all(isinstance(n, str) for n in names):
        raise ValueError("metadata class_names holds values that are not strings")
    unknown = sorted(set(meta.get("spec") or ()) - SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown spec keys {unknown}; expected {sorted(SPEC_KEYS)}")


def checkpoint_metadata(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a checkpoint that describes the model (no tensors, no recipe state)."""
    out = {k: ckpt[k] for k in METADATA_KEYS if ckpt.get(k) is not None}
    pre = out.get("preprocessing")
    if pre is not None and hasattr(pre, "to_dict"):
        out["preprocessing"] = pre.to_dict()
    return out


def save_safetensors(
    path: str | os.PathLike, state_dict: Mapping[str, Tensor], metadata: dict | None = None
) -> Path:
    """Write tensors (and JSON-able `metadata`) as safetensors, atomically."""
    save = require("safetensors.torch", "export", "writing safetensors files").save
    # safetensors refuses shared or strided storage: give every tensor its own contiguous copy.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {SAFETENSORS_META_KEY: json.dumps(metadata)} if metadata else None
    return write_atomic(path, lambda f: f.write(save(tensors, metadata=meta)))


def save_model_file(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Save a checkpoint payload: .safetensors keeps the weights and the model's metadata only."""
    if Path(path).suffix == ".safetensors":
        return save_safetensors(path, payload["model"], checkpoint_metadata(payload))
    payload = dict(payload)
    if hasattr(payload.get("preprocessing"), "to_dict"):
        payload["preprocessing"] = payload["preprocessing"].to_dict()
    return save_checkpoint(path, payload)
