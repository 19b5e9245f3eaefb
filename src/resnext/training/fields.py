"""Typed values from text: the `--set key=value` parser and the check of a value against its
dataclass annotation (bool, int, float, Literal choices, tuples), with one-line errors."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(name: str, text: str, tp: Any) -> Any:
    """Turn the string of a `--set` into a value of the field's type."""
    try:
        if tp is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if get_origin(tp) is tuple:
            item = get_args(tp)[0]
            return tuple(item(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"{name} expects {_name(tp)}, got {text!r}") from None
    return text


def parse_set(items: list[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def check_value(name: str, value: Any, tp: Any) -> Any:
    """Validate `value` against the annotation; ints are accepted where floats are expected."""
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{name} must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if isinstance(value, (list, tuple)):
            value = tuple(float(v) if item is float and _is_int(v) else v for v in value)
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return value
        raise ValueError(f"{name} expects {_name(tp)}, got {value!r}")
    if tp is float and _is_int(value):
        return float(value)
    if get_origin(tp) in (Union, types.UnionType):
        raise TypeError(f"unsupported config annotation for {name}")
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} expects {_name(tp)}, got {value!r}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name(tp: Any) -> str:
    if get_origin(tp) is tuple:
        return f"comma-separated {get_args(tp)[0].__name__}s"
    return getattr(tp, "__name__", str(tp))
