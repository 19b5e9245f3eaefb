"""data/tar.py against the standard library's tarfile (what webdataset reads shards with), on
archives tar.py did not write: tarfile's USTAR, GNU and PAX archives, size and checksum fields
written in every form tarfile reads, names that are not UTF-8, and damaged headers. The rule:
where tar_members gives members, they are tarfile's regular files, name for name."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from fuzz.mutate import mutate
from resnext.data.tar import TarError, tar_members
from resnext.data.wds import scan_tar

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def reference(data: bytes) -> list[tuple[str, int, int]] | None:
    """tarfile's regular members (name, data offset, size), or None where it refuses the file."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return [(m.name, m.offset_data, m.size) for m in tar if m.type in _REGULAR]
    except Exception:  # noqa: BLE001 - any refusal: tar_members must then refuse too
        return None


def ours(data: bytes) -> list[tuple[str, int, int]] | None:
    try:
        return list(tar_members(io.BytesIO(data), len(data)))
    except TarError:
        return None


def agrees(data: bytes) -> bool:
    """tar_members refuses the file, or reads what tarfile reads."""
    got = ours(data)
    return got is None or got == reference(data)


def archive(fmt: int, members: list[tuple[str, bytes]], kinds: bool = False, **kw) -> bytes:
    """A tar written by tarfile; `kinds` adds a folder, a symlink, a hard link and a FIFO before
    each member (their names and link names long enough for GNU and pax records of their own)."""
    pad = 0 if fmt == tarfile.USTAR_FORMAT else 40
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **kw) as tar:
        for k, (name, payload) in enumerate(members):
            if kinds:
                for kind in (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE):
                    other = tarfile.TarInfo(f"{'o' * (pad * k)}{kind.decode()}{k}")
                    other.type, other.linkname = kind, "l" * (pad * k)
                    tar.addfile(other)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def _members(rng: random.Random, long: bool) -> list[tuple[str, bytes]]:
    names = ["a.jpg", "a.cls", "dir/b.png", "é/ü.jpg", "c\udcff.jpg", "c\udcfe.jpg"]
    if long:
        names += ["p" * 90 + "/" + "q" * 90 + ".jpg", "r" * 150 + ".cls", "s/" * 80 + "t.jpg"]
    return [(n, rng.randbytes(rng.choice((0, 1, 511, 512, 513, 2000)))) for n in names]


def _variants() -> dict[str, bytes]:
    rng = random.Random(0)
    out = {}
    for fmt_name, fmt in FORMATS.items():
        long = fmt != tarfile.USTAR_FORMAT  # ustar refuses names past its prefix + name
        for kinds in (False, True):
            members = _members(rng, long)
            if fmt == tarfile.USTAR_FORMAT:
                members = [m for m in members if len(m[0]) < 100 or "/" in m[0][-100:]]
            out[f"{fmt_name}-kinds{int(kinds)}"] = archive(fmt, members, kinds)
    common = {"comment": "x" * 600, "mtime": "1.5"}  # records for every member
    out["pax-global"] = archive(tarfile.PAX_FORMAT, _members(rng, True), pax_headers=common)
    out["pax-global-path"] = archive(tarfile.PAX_FORMAT, _members(rng, False),
                                     pax_headers={"path": "same.jpg"})  # fmt: skip
    return out


VARIANTS = _variants()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_archives_tarfile_writes_are_read_as_tarfile_reads_them(name):
    data = VARIANTS[name]
    want = reference(data)
    assert want and ours(data) == want


def _set_field(data: bytes, at: int, start: int, value: bytes, checksum: bytes = b"%06o\0 "):
    """The header at byte `at` with `value` at its byte `start`, and its checksum redone
    (written as `checksum` % sum) so that only the field differs."""
    raw = bytearray(data)
    raw[at + start : at + start + len(value)] = value
    raw[at + 148 : at + 156] = b" " * 8
    raw[at + 148 : at + 156] = (checksum % sum(raw[at : at + 512])).ljust(8)
    return bytes(raw)


def _headers(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [m.offset for m in tar]


# The size 1 written as tarfile reads it: octal up to the first NUL (what follows is ignored),
# blanks around it, Python's int() forms, GNU base-256.
ONE = [b"00001\x00000000", b"00000000001\x00", b"00000000001 ", b"          1\x00",
       b"1\x00         ", b"1\x00zzzzzzzzz", b" 1 \x00\x00\x00\x00\x00\x00\x00\x00\x00",
       b"0o1\x00\x00\x00\x00\x00\x00\x00\x00\x00", b"+1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
       b"0_1\x00\x00\x00\x00\x00\x00\x00\x00\x00", b"\x80" + (1).to_bytes(11, "big")]  # fmt: skip
CHECKSUMS = [b"%06o\x00 ", b"%07o\x00", b"%o\x00", b" %o \x00", b"%08o"]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("size", ONE, ids=lambda b: b.hex())
def test_size_fields_in_every_form_tarfile_reads(fmt, size):
    data = archive(FORMATS[fmt], [("x.jpg", b"A"), ("y.cls", b"7")])
    for checksum in CHECKSUMS:
        damaged = _set_field(data, 0, 124, size, checksum)  # the first header
        assert reference(damaged) == [("x.jpg", 512, 1), ("y.cls", 1536, 1)]
        assert ours(damaged) == reference(damaged), (size, checksum)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_numbers_tarfile_refuses_are_refused(fmt):
    data = archive(FORMATS[fmt], [("x.jpg", b"A"), ("y.cls", b"7")])
    for start, bad in [(124, b"9" * 11 + b"\x00"), (124, b"1 1\x00"), (100, b"x"), (136, b"8"),
                       (329, b"\xe9"), (124, b"\xff" * 12)]:  # fmt: skip
        for at in _headers(data):
            damaged = _set_field(data, at, start, bad)
            assert ours(damaged) is None, (start, bad, at)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_names_that_are_not_utf8_stay_distinct_and_are_tarfiles(tmp_path, fmt):
    """Bytes no UTF-8 decoder reads become surrogates, as in tarfile: distinct names stay
    distinct keys (a replacement character would make all of these one key)."""
    rng = random.Random(fmt)
    raw = {bytes([0x61, rng.randrange(0x80, 0x100), rng.randrange(0x80, 0x100)]) for _ in range(60)}
    names = [r.decode("utf-8", "surrogateescape") for r in sorted(raw)]
    data = archive(FORMATS[fmt], [(f"{n}.jpg", b"x") for n in names])
    (tmp_path / "x.tar").write_bytes(data)
    keys = [sample.name for sample in scan_tar(tmp_path / "x.tar")]
    assert keys == names and len(set(keys)) == len(raw)
    assert [k.encode("utf-8", "surrogateescape") for k in keys] == sorted(raw)
    assert ours(data) == reference(data)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_damaged_archives_are_refused_or_read_as_tarfile_reads_them(name):
    """The rule over 400 damaged copies of each archive: bytes changed anywhere, then header
    bytes changed with the checksum redone, so that damage passes the checksum too."""
    rng = random.Random(name)
    data = VARIANTS[name]
    headers = _headers(data)
    read = 0
    for k in range(400):
        if k % 2:
            damaged = mutate(data, rng)
        else:
            at = rng.choice(headers)
            header = mutate(data[at : at + 512], rng).ljust(512, b"\x00")[:512]
            damaged = _set_field(data[:at] + header + data[at + 512 :], at, 0, b"")
        assert agrees(damaged), damaged
        read += ours(damaged) is not None
    assert read > 40  # the damage left many archives readable: the comparison was made


def test_an_archive_tarfile_reads_short_is_refused():
    """A pax global size applies to every member; after a member with its own pax records (a
    non-ASCII name) tarfile looks for the next header at a wrong place and stops there without
    a word, 2 members read of 3: a TarError here."""
    members = [("a.jpg", b"x" * 2000), ("é.jpg", b"y" * 2000), ("b.jpg", b"z")]
    data = archive(tarfile.PAX_FORMAT, members, pax_headers={"size": "3"})
    assert [name for name, _, _ in reference(data)] == ["a.jpg", "é.jpg"]
    with pytest.raises(TarError, match="bad header"):
        list(tar_members(io.BytesIO(data), len(data)))


def test_a_pax_charset_tarfile_cannot_read_is_refused():
    """Found by the fuzzer: tarfile raises UnicodeDecodeError on a pax `hdrcharset` value that
    is not UTF-8, wherever it appears in the records; tar_members read on."""
    data = archive(tarfile.PAX_FORMAT, [("é.jpg", b"x")])
    at = data.index(b"path=")
    damaged = data[: at - 3] + b"16 hdrcharset=\xc2\n" + data[at + 13 :]  # as long
    assert reference(damaged) is None
    with pytest.raises(TarError, match="hdrcharset"):
        list(tar_members(io.BytesIO(damaged), len(damaged)))


class _Bounded(io.BytesIO):
    """A file that fails a read past its end (a real file's buffer is allocated up front)."""

    def read(self, n: int = -1) -> bytes:
        assert n <= len(self.getbuffer()), f"read({n}) of a {len(self.getbuffer())}-byte file"
        return super().read(n)


@pytest.mark.parametrize("kind", [b"L", b"x", b"g", b"K", b"0"])
def test_a_size_past_the_file_is_refused_before_any_read(kind):
    data = archive(tarfile.GNU_FORMAT, [("x.jpg", b"A")])
    damaged = _set_field(data, 0, 124, b"\x80" + (2**80).to_bytes(11, "big"))
    damaged = _set_field(damaged, 0, 156, kind)
    with pytest.raises(TarError, match="truncated"):
        list(tar_members(_Bounded(damaged), len(damaged)))


def test_a_truncated_or_empty_file_is_a_tar_error():
    data = VARIANTS["gnu-kinds1"]
    end = max(offset + size for _, offset, size in ours(data))
    for cut in (0, 100, 512, end // 2, end - 1, end, end + 512):
        with pytest.raises(TarError):
            list(tar_members(io.BytesIO(data[:cut]), cut))


def test_members_are_read_at_their_offsets(tmp_path):
    """Each member's bytes from its offset and size are what tarfile extracts."""
    data = VARIANTS["pax-kinds1"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        want = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    got = {name: data[offset : offset + size] for name, offset, size in ours(data)}
    assert got == want


def test_shards_with_names_that_are_not_utf8_load_as_distinct_samples(tmp_path):
    from PIL import Image

    from resnext.data.datasets import load_dataset

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    names = ["a\udcff", "a\udcfe"]  # one key each under tarfile's rule, one under U+FFFD
    with tarfile.open(tmp_path / "x-train-0000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for label, name in enumerate(names):
            for ext, payload in (("png", png.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = load_dataset("wds", str(tmp_path), "train", in_memory="no")
    assert data.labels.tolist() == [0, 1]
