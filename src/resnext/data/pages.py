"""One binary value straight from an uncompressed parquet column chunk, without pyarrow.

`resnext pack` writes one row per row group, uncompressed and without a dictionary, so the image
of a row is a column chunk of one data page: a Thrift-compact page header, the definition
levels, then the value's 4-byte length and bytes (the Parquet format's PLAIN encoding). Reading
it with one `os.pread` costs what a tar member costs, where pyarrow's `read_row_group` costs
about 0.1-0.2 ms of set-up per row. Any other layout is left to pyarrow.
"""

from __future__ import annotations

_DATA_PAGE, _DATA_PAGE_V2 = 0, 3
_PLAIN = 0
# A parquet page header nests three structs deep (PageHeader, DataPageHeader, Statistics); a
# header nested deeper is damaged, not a page, and Python's stack must not be the limit.
_MAX_DEPTH = 16
_MAX_VARINT = 10  # bytes of a 64-bit varint


class PageError(ValueError):
    """A chunk this reader does not decode (the caller falls back to pyarrow)."""


def plain_value(chunk: bytes, max_def: int) -> bytes | None:
    """The one value of a one-row uncompressed column chunk, or None when it is null.

    `max_def` is the column's maximum definition level (2 for `image.bytes`: the struct and
    the field may each be null). Any other bytes raise PageError: every read is bounded by the
    bytes that remain, so a damaged header costs at most one pass over the chunk.
    """
    header, pos = _struct(chunk, 0, 0)
    kind, size = _int(header, 1), _int(header, 3)
    if size is None or size < 0 or pos + size > len(chunk):
        raise PageError("truncated page")
    body = memoryview(chunk)[pos : pos + size]
    if kind == _DATA_PAGE:
        page = _sub(header, 5)
        if _int(page, 1) != 1 or _int(page, 2) != _PLAIN:
            raise PageError("not one PLAIN value")
        levels = 0
        if max_def:
            levels = 4 + int.from_bytes(body[:4], "little")
            defined = _first_level(body[4:levels], max_def.bit_length())
        values = body[levels:]
    elif kind == _DATA_PAGE_V2:
        page = _sub(header, 8)
        if _int(page, 1) != 1 or _int(page, 4) != _PLAIN or _int(page, 6, 0) != 0:
            raise PageError("not one PLAIN value")
        levels = _int(page, 5, 0)
        if levels is None or not 0 <= levels <= len(body):
            raise PageError("truncated levels")
        if max_def:
            defined = _first_level(body[:levels], max_def.bit_length())
        values = body[levels:]
    else:
        raise PageError(f"page type {kind}")
    if max_def and defined != max_def:
        return None
    length = int.from_bytes(values[:4], "little")
    if len(values) < 4 or 4 + length > len(values):
        raise PageError("truncated value")
    return bytes(values[4 : 4 + length])


def _int(fields: dict, key: int, default: int | None = None) -> int | None:
    """An integer field (a bool or a struct where an integer belongs is None)."""
    value = fields.get(key, default)
    return value if type(value) is int else None


def _sub(fields: dict, key: int) -> dict:
    value = fields.get(key)
    return value if isinstance(value, dict) else {}


def _first_level(rle: memoryview, width: int) -> int:
    """The first level of an RLE/bit-packed hybrid run (levels of at most 8 bits)."""
    try:
        head, pos = _varint(rle, 0)
    except PageError:
        raise PageError("truncated levels") from None
    if pos >= len(rle):
        raise PageError("truncated levels")
    if head & 1:  # bit-packed groups of 8: the first value is the lowest bits of the next byte
        return rle[pos] & ((1 << width) - 1)
    return rle[pos]  # an RLE run: its value in one byte


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    end = pos + _MAX_VARINT
    while pos < end:
        if pos >= len(buf):
            raise PageError("truncated header")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise PageError("varint over 64 bits")


def _struct(buf, pos: int, depth: int) -> tuple[dict, int]:
    """A Thrift compact struct: {field id: int or nested dict}; other fields skipped."""
    if depth > _MAX_DEPTH:
        raise PageError(f"header nested over {_MAX_DEPTH} deep")
    out: dict = {}
    field = 0
    while True:
        if pos >= len(buf):
            raise PageError("truncated header")
        head = buf[pos]
        pos += 1
        if head == 0:
            return out, pos
        delta, kind = head >> 4, head & 0x0F
        if delta:
            field += delta
        else:
            raw, pos = _varint(buf, pos)
            field = (raw >> 1) ^ -(raw & 1)
        value, pos = _value(buf, pos, kind, depth, False)
        if value is not None:
            out[field] = value


def _value(buf, pos: int, kind: int, depth: int, element: bool):
    """One value of Thrift compact type `kind` at `pos`: (value or None if skipped, next pos).

    Every branch checks its bytes against `len(buf)`, and every element of a list, set or map
    takes at least one byte, so a declared size past the bytes left is refused before looping.
    """
    if 4 <= kind <= 6:  # zigzag varints (the most common, first)
        raw, pos = _varint(buf, pos)
        return (raw >> 1) ^ -(raw & 1), pos
    if kind == 12:
        return _struct(buf, pos, depth + 1)
    if kind == 8:
        size, pos = _varint(buf, pos)
        return None, _skip(buf, pos, size)
    if kind in (1, 2):
        if not element:  # a field's boolean lives in its type
            return kind == 1, pos
        return None, _skip(buf, pos, 1)  # an element's takes a byte
    if kind == 3:
        end = _skip(buf, pos, 1)
        return buf[pos], end
    if kind == 7:
        return None, _skip(buf, pos, 8)
    if kind in (9, 10):
        pos = _skip(buf, pos, 1)
        size, elem = buf[pos - 1] >> 4, buf[pos - 1] & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        _skip(buf, pos, size)
        for _ in range(size):
            _, pos = _value(buf, pos, elem, depth + 1, True)
        return None, pos
    if kind == 11:
        size, pos = _varint(buf, pos)
        if size:
            _skip(buf, pos, 1 + 2 * size)  # the key and value types, then the entries
            types = buf[pos]
            pos += 1
            for _ in range(size):
                _, pos = _value(buf, pos, types >> 4, depth + 1, True)
                _, pos = _value(buf, pos, types & 0x0F, depth + 1, True)
        return None, pos
    raise PageError(f"unknown Thrift type {kind}")


def _skip(buf, pos: int, size: int) -> int:
    """`pos + size`, where that is within `buf`."""
    if pos + size > len(buf):
        raise PageError("truncated header")
    return pos + size
