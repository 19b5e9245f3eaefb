"""data/pages.py, the reader of one value from an uncompressed parquet page: pyarrow is the
reference on the chunks it writes, and on any other bytes the answer is a value or PageError,
never another exception and never a loop longer than the bytes allow."""

from __future__ import annotations

import contextlib
import random
import signal

import pytest

from fuzz.mutate import mutate, varint
from resnext.data.pages import PageError, plain_value

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@contextlib.contextmanager
def prompt(seconds: float = 10.0):
    """Fails a block still running after `seconds`: a generous bound (each input here takes
    microseconds), so that a parser that loops for ever fails instead of hanging the suite."""

    def stop(*_):
        raise AssertionError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _chunks(tmp_path, version: str) -> list[tuple[bytes, bytes | None]]:
    """(column chunk, its value) of each row of a file written as `resnext pack` writes it."""
    from resnext.data.parquet import chunk_index

    rng = random.Random(0)
    images = [{"bytes": rng.randbytes(n), "path": "x.jpg"} for n in (0, 1, 7, 300, 4000)]
    images += [None, {"bytes": None, "path": "gone.jpg"}]
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(images, kind), "label": pa.array([0] * len(images))})
    path = tmp_path / f"pages-{version}.parquet"
    pq.write_table(table, path, row_group_size=1, compression="none", use_dictionary=False,
                   data_page_version=version)  # fmt: skip
    chunks, max_def = chunk_index(pq.ParquetFile(path))
    assert chunks is not None and max_def == 2
    raw = path.read_bytes()
    return [(raw[o : o + n], (image or {}).get("bytes")) for (o, n), image in zip(chunks, images)]


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_the_chunks_pyarrow_writes_are_read_as_pyarrow_reads_them(tmp_path, version):
    for chunk, value in _chunks(tmp_path, version):
        assert plain_value(chunk, 2) == value


@pytest.mark.parametrize(
    "header",
    [
        b"\x19",  # a list field and nothing after it
        b"\x13",  # a byte field and nothing after it
        b"\x1b\x02",  # a map of one entry and no types
        b"\x1c" * 5000,  # structs nested 5,000 deep
        b"\x15" + b"\xff" * 5000,  # a varint of 35,000 bits
        b"\x19\xf7" + varint(2**49),  # a list of 2^49 doubles
        b"\x1b" + varint(2**32) + b"\x11",  # a map of 2^32 bool -> bool entries
        b"\x1a\xf1" + varint(2**40),  # a set of 2^40 booleans
        b"\x18" + varint(2**62),  # a binary field of 2^62 bytes
        b"\x15\x00\x2c\x00\x00",  # the page size a struct, not an integer
        b"\x15\x00\x25\x02\x25\x02\x00\x00",  # the data page header an integer
        # a v2 page whose definition levels' length is a struct, then a negative one
        b"\x15\x06\x25\x04\x5c\x15\x02\x15\x00\x15\x02\x15\x00\x1c\x00\x00\x00\x00\x00",
        b"\x15\x06\x25\x04\x5c\x15\x02\x15\x00\x15\x02\x15\x00\x15\x01\x00\x00\x00\x00",
    ],
    ids=lambda b: b[:6].hex(),
)
def test_damaged_headers_are_a_page_error_at_once(header):
    for max_def in (0, 1, 2):
        with prompt(), pytest.raises(PageError):
            plain_value(header, max_def)


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_any_bytes_give_a_value_or_a_page_error(tmp_path, version):
    """The rule over 4,000 damaged chunks per page version: bits flipped, edge numbers written
    over lengths and counts, bytes inserted, deleted, repeated and cut, from pyarrow's chunks."""
    rng = random.Random(version)
    seeds = [chunk for chunk, _ in _chunks(tmp_path, version)]
    outcomes = {"value": 0, "none": 0, "error": 0}
    for _ in range(4000):
        data = mutate(rng.choice(seeds), rng)
        with prompt():
            try:
                value = plain_value(data, rng.choice((0, 1, 2)))
            except PageError:
                outcomes["error"] += 1
                continue
        assert value is None or isinstance(value, bytes)
        outcomes["none" if value is None else "value"] += 1
    assert min(outcomes.values()) > 0, outcomes  # the damage reached every outcome


def _struct(*fields: tuple[int, int | bytes]) -> bytes:
    """A Thrift compact struct of i32 fields and nested structs (already encoded), by field id."""
    out, last = bytearray(), 0
    for fid, value in fields:
        nested = isinstance(value, bytes)
        out.append(((fid - last) << 4) | (12 if nested else 5))
        out += value if nested else varint((value << 1) ^ (value >> 63))  # zigzag
        last = fid
    return bytes(out + b"\x00")


def page(body: bytes, version: int = 1, levels: int = 0, size: int | None = None,
         **fields: int) -> bytes:  # fmt: skip
    """A page header as parquet writes it, then `body`: data page v1 (fields num_values,
    encoding) or v2 (also def_bytes, rep_bytes; `levels` bytes of `body` are its levels)."""
    size = len(body) if size is None else size
    if version == 1:
        sub = (5, _struct((1, fields.get("num_values", 1)), (2, fields.get("encoding", 0)),
                          (3, 3), (4, 3)))  # fmt: skip
    else:  # rep_bytes=None leaves the optional field out
        v2 = [(1, fields.get("num_values", 1)), (2, 0), (3, 1), (4, fields.get("encoding", 0)),
              (5, fields.get("def_bytes", levels)), (6, fields.get("rep_bytes", 0))]  # fmt: skip
        sub = (8, _struct(*(f for f in v2 if f[1] is not None)))
    return _struct((1, 0 if version == 1 else 3), (2, size), (3, size), sub) + body


def _body(version: int, level_run: bytes, value: bytes, tail: bytes = b"") -> tuple[bytes, int]:
    """Levels (v1: their 4-byte length first), then the value's length and bytes, then `tail`."""
    levels = len(level_run).to_bytes(4, "little") + level_run if version == 1 else level_run
    return levels + len(value).to_bytes(4, "little") + value + tail, len(level_run)


# First definition levels of a column of max level 2, as an RLE run (header 2: one value, its
# byte) or bit-packed (header 3: one group of 8, the lowest 2 bits of the byte first).
LEVELS = {"rle 2": (b"\x02\x02", 2), "rle 1": (b"\x02\x01", 1), "rle 0": (b"\x02\x00", 0),
          "packed 2": (b"\x03\xfe", 2), "packed 1": (b"\x03\xfd", 1), "packed 0": (b"\x03\x00", 0),
          "2 packed groups": (b"\x05\xfe\xff", 2)}  # fmt: skip


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("levels", sorted(LEVELS))
@pytest.mark.parametrize("tail", [b"", b"more bytes"])
def test_definition_levels_decide_null_in_both_encodings(version, levels, tail):
    """A value whose first definition level is the maximum is read, bytes after it ignored;
    a lower level is a null, as parquet's RLE/bit-packed hybrid encoding defines them."""
    run, level = LEVELS[levels]
    body, n = _body(version, run, b"image bytes", tail)
    chunk = page(body, version, levels=n)
    assert plain_value(chunk, 2) == (b"image bytes" if level == 2 else None)
    assert plain_value(page(b"\x03\x00\x00\x00abc" + tail, version), 0) == b"abc"  # no levels
    if version == 2:  # without the optional repetition levels' length
        assert plain_value(page(body, 2, levels=n, rep_bytes=None), 2) == plain_value(chunk, 2)


def _v1(value: bytes = b"abc", **kw) -> bytes:
    return page(_body(1, b"\x02\x02", value)[0], 1, **kw)


def _v2(value: bytes = b"abc", **kw) -> bytes:
    return page(_body(2, b"\x02\x02", value)[0], 2, levels=2, **kw)


@pytest.mark.parametrize(
    "chunk, why",
    [
        (_v1(size=-1), "truncated page"),
        (_v1(size=100), "truncated page"),
        (_struct((1, 0)) + b"\x00", "truncated page"),  # no size
        (_v1(num_values=2), "not one PLAIN value"),
        (_v1(encoding=2), "not one PLAIN value"),
        (_v2(num_values=0), "not one PLAIN value"),
        (_v2(encoding=8), "not one PLAIN value"),
        (_v2(rep_bytes=1), "not one PLAIN value"),
        (_v2(def_bytes=100), "truncated levels"),
        (_v2(def_bytes=-1), "truncated levels"),
        (page(b"\x00\x00\x00\x00", 2), "truncated levels"),  # v2 without levels
        (page(b"\x01\x00\x00\x00\x02", 1), "truncated levels"),  # a run without its value
        (_struct((1, 7), (2, 0), (3, 0)), "page type 7"),
        (page(_body(1, b"\x02\x02", b"")[0][:-2], 1), "truncated value"),  # 2 of 4 length bytes
        (page(_body(1, b"\x02\x02", b"abc")[0][:-1], 1), "truncated value"),
    ],
)
def test_each_refusal_says_why(chunk, why):
    with pytest.raises(PageError, match=f"^{why}$"):
        plain_value(chunk, 2)


def test_headers_nest_16_deep_and_varints_take_10_bytes():
    """The limits are the stated ones: structs nested 16 deep and varints of 10 bytes (64 bits)
    are read, one more is a PageError."""
    body = _body(1, b"\x02\x02", b"abc")[0]
    sub = _struct((1, 1), (2, 0), (3, 3), (4, 3))
    for depth, ok in ((16, True), (17, False)):
        chain = b"\x1c" * (depth - 1) + b"\x00" * depth  # field 6: structs `depth` deep
        chunk = _struct((1, 0), (2, len(body)), (3, len(body)), (5, sub), (6, chain)) + body
        if ok:
            assert plain_value(chunk, 2) == b"abc"
        else:
            with pytest.raises(PageError, match="nested over 16 deep"):
                plain_value(chunk, 2)
    chunk = _v1()
    assert chunk[2] == 0x15 and chunk[3] < 0x80  # field 2, its one-byte varint
    for width, ok in ((10, True), (11, False)):
        padded = bytes([chunk[3] | 0x80]) + b"\x80" * (width - 2) + b"\x00"  # the same number
        if ok:
            assert plain_value(chunk[:3] + padded + chunk[4:], 2) == b"abc"
        else:
            with pytest.raises(PageError, match="varint over 64 bits"):
                plain_value(chunk[:3] + padded + chunk[4:], 2)
