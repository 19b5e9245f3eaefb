"""Tar files read from their 512-byte member headers alone (no package beyond the standard
library): each regular member's name, data offset and size, so that a member is later one
positioned read. WebDataset shards (data/wds.py) are tar files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")  # regular files (tar's "contiguous" type 7 included)


class TarError(Exception):
    """A tar file that is truncated or not a tar file; the message completes "FILE ..."."""


def tar_members(f: BinaryIO, file_size: int) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file in a tar, from its headers alone.

    Iterating with the standard library's tarfile alone takes 47-69 us per sample of three
    members (an object per member); this reads the ustar headers itself (GNU long names and pax
    paths included) in 15-21 us, measured on one core: 25 s for ImageNet's 1.28 M samples.
    """
    pos, long_name = 0, None
    while True:
        f.seek(pos)
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise TarError("is truncated (no end-of-archive blocks)" if pos else "is empty")
        if header == bytes(BLOCK):
            if f.read(BLOCK) != bytes(BLOCK):
                raise TarError("is truncated (half an end-of-archive)")
            return
        if _checksum(header) != _octal(header[148:156]):
            raise TarError(f"is not a tar file (bad header at byte {pos})")
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        size, kind, data = _size(header[124:136]), header[156:157], pos + BLOCK
        if data + size > file_size:
            raise TarError(f"is truncated (a member ends past its {file_size} bytes)")
        if kind in (b"L", b"x"):  # the next member's name: GNU long name, pax record
            f.seek(data)
            long_name = _long_name(f.read(size), kind)
        else:  # a long name belongs to the next member, whatever its kind (folder, link)
            if kind in _FILE_TYPES:
                yield (long_name or name).decode("utf-8", "replace"), data, size
            long_name = None
        pos = data + (size + BLOCK - 1) // BLOCK * BLOCK


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _octal(field: bytes) -> int:
    try:
        return int(field.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        return -1


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for members of 8 GB and more
        return int.from_bytes(field[1:], "big")
    return max(_octal(field), 0)


def _long_name(data: bytes, kind: bytes) -> bytes | None:
    if kind == b"L":
        return data.split(b"\0", 1)[0]
    for record in data.split(b"\n"):  # pax: "LENGTH key=value"
        key, _, value = record.partition(b" ")[2].partition(b"=")
        if key == b"path":
            return value
    return None
