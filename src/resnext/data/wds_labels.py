"""The label of a WebDataset sample, by timm's rule (reader_wds): its `.cls` member, or a field
of its `.json` member.

A split whose `_info.json` entry names an `alt_label` field takes every label from that field of
the `.json` member (timm reads it so, `.cls` or not); otherwise a sample's `.cls` is its label,
and a sample without one takes the `label` field of its `.json`. A field is a top-level key or a
'/' path into nested objects (timm's `get_field`). A label is a non-negative integer; anything
else makes the sample a named bad sample.
"""

from __future__ import annotations

import json

DEFAULT_FIELD = "label"
MAX_CLS = 32  # bytes of a .cls member read: an integer label is far shorter
MAX_JSON = 1 << 20  # bytes of a .json member read: a sample's metadata, never an image


def sample_label(
    cls: bytes | None, meta: bytes | None, field: str | None
) -> tuple[int | None, str]:
    """(label, where it came from) or (None, why there is none) for one sample; `field` is the
    split's alt_label (None: .cls, else the .json's "label")."""
    if field is None and cls is not None:
        return _cls_label(cls)
    name = field or DEFAULT_FIELD
    if meta is None:
        return None, f"no .json member for its {name!r} field" if field else "no .cls label"
    if len(meta) > MAX_JSON:
        return None, f"a .json of more than {MAX_JSON} bytes"
    try:
        value = _field(json.loads(meta), name)
    except (UnicodeDecodeError, ValueError):
        return None, "its .json member is not JSON"
    except KeyError:
        return None, f"no .cls label, nor a {name!r} field in its .json" if not field else (
            f"no {name!r} field in its .json"
        )
    if not isinstance(value, int) or isinstance(value, bool):
        shown = json.dumps(value)[:20]
        return None, f".json field {name!r} is a {type(value).__name__} {shown}, not an integer"
    if value < 0:
        return None, f"label {value} (unlabelled)"
    return value, f"the {name!r} field of .json members"


def _cls_label(label: bytes) -> tuple[int | None, str]:
    if len(label) > MAX_CLS:
        return None, f"a .cls of more than {MAX_CLS} bytes is not an integer label"
    try:
        value = int(label.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None, f"label {label[:20]!r} is not an integer"
    return (value, ".cls members") if value >= 0 else (None, f"label {value} (unlabelled)")


def _field(meta: object, name: str) -> object:
    """`meta[name]`, or the '/' path `name` into nested objects; KeyError when absent."""
    if isinstance(meta, dict) and name in meta:
        return meta[name]
    for part in name.split("/"):
        if not isinstance(meta, dict) or part not in meta:
            raise KeyError(name)
        meta = meta[part]
    return meta


def labels_from(counts: dict[str, int]) -> str:
    """Where a split's labels came from, for the log: "labels from .cls members (9)"."""
    return "labels from " + " and ".join(f"{where} ({n})" for where, n in counts.items())
