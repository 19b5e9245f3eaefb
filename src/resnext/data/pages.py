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


class PageError(ValueError):
    """A chunk this reader does not decode (the caller falls back to pyarrow)."""


def plain_value(chunk: bytes, max_def: int) -> bytes | None:
    """The one value of a one-row uncompressed column chunk, or None when it is null.

    `max_def` is the column's maximum definition level (2 for `image.bytes`: the struct and
    the field may each be null).
    """
    header, pos = _struct(chunk, 0)
    kind, size = header.get(1), header.get(3)
    if size is None or pos + size > len(chunk):
        raise PageError("truncated page")
    body = memoryview(chunk)[pos : pos + size]
    if kind == _DATA_PAGE:
        page = header.get(5, {})
        if page.get(1) != 1 or page.get(2) != _PLAIN:
            raise PageError("not one PLAIN value")
        levels = 0
        if max_def:
            levels = 4 + int.from_bytes(body[:4], "little")
            defined = _first_level(body[4:levels], max_def.bit_length())
        values = body[levels:]
    elif kind == _DATA_PAGE_V2:
        page = header.get(8, {})
        if page.get(1) != 1 or page.get(4) != _PLAIN or page.get(6, 0):
            raise PageError("not one PLAIN value")
        levels = page.get(5, 0)
        if max_def:
            defined = _first_level(body[:levels], max_def.bit_length())
        values = body[levels:]
    else:
        raise PageError(f"page type {kind}")
    if max_def and defined != max_def:
        return None
    length = int.from_bytes(values[:4], "little")
    if 4 + length > len(values):
        raise PageError("truncated value")
    return bytes(values[4 : 4 + length])


def _first_level(rle: memoryview, width: int) -> int:
    """The first level of an RLE/bit-packed hybrid run (levels of at most 8 bits)."""
    head, pos = _varint(rle, 0)
    if pos >= len(rle):
        raise PageError("truncated levels")
    if head & 1:  # bit-packed groups of 8: the first value is the lowest bits of the next byte
        return rle[pos] & ((1 << width) - 1)
    return rle[pos]  # an RLE run: its value in one byte


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise PageError("truncated header")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _struct(buf, pos: int) -> tuple[dict, int]:
    """A Thrift compact struct: {field id: int or nested dict}; other fields skipped."""
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
        value, pos = _value(buf, pos, kind)
        if value is not None:
            out[field] = value


def _value(buf, pos: int, kind: int):
    if kind in (1, 2):  # booleans live in the type
        return kind == 1, pos
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):  # zigzag varints
        raw, pos = _varint(buf, pos)
        return (raw >> 1) ^ -(raw & 1), pos
    if kind == 7:
        return None, pos + 8
    if kind == 8:
        size, pos = _varint(buf, pos)
        return None, pos + size
    if kind in (9, 10):
        head = buf[pos]
        pos += 1
        size, elem = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        if elem in (1, 2):  # booleans in a list take a byte each
            return None, pos + size
        for _ in range(size):
            _, pos = _value(buf, pos, elem)
        return None, pos
    if kind == 11:
        size, pos = _varint(buf, pos)
        if size:
            types = buf[pos]
            pos += 1
            for _ in range(size):
                _, pos = _value(buf, pos, types >> 4)
                _, pos = _value(buf, pos, types & 0x0F)
        return None, pos
    if kind == 12:
        return _struct(buf, pos)
    raise PageError(f"unknown Thrift type {kind}")
