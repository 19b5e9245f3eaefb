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
