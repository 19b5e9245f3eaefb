"""Byte mutations of valid files: the seeded loop's only source of damaged inputs (atheris, where
installed, brings its own, guided by coverage). Tests use them too, seeded, as property checks."""

from __future__ import annotations

import random

# Values at the edges where parsers go wrong: zero, sign bits, powers of two, all ones.
_EDGES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 2**31 - 1, 2**31, 2**32, 2**49, 2**63)
_BYTES = bytes([0x00, 0x01, 0x0F, 0x10, 0x1C, 0x19, 0x7F, 0x80, 0xF7, 0xFF])


def varint(n: int) -> bytes:
    """`n` as an unsigned LEB128 varint (Thrift compact, protobuf)."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _number(rng: random.Random) -> bytes:
    n = rng.choice(_EDGES) + rng.choice((-1, 0, 0, 1))
    n = max(n, 0)
    form = rng.randrange(4)
    if form == 0:
        return varint(n)
    if form == 1:
        return (n & 0xFFFFFFFF).to_bytes(4, rng.choice(("little", "big")))
    if form == 2:
        return (n & (2**64 - 1)).to_bytes(8, rng.choice(("little", "big")))
    return str(n).encode()


def mutate(data: bytes, rng: random.Random, rounds: int = 0) -> bytes:
    """`data` changed in 1 to 4 places (or `rounds` places): bits flipped, edge bytes and
    numbers written or inserted, ranges deleted, repeated or moved, the end cut off."""
    out = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        if not out:
            out += rng.randbytes(rng.randint(1, 16))
            continue
        at = rng.randrange(len(out))
        op = rng.randrange(8)
        if op == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at] = rng.choice(_BYTES)
        elif op == 2:
            out[at] = rng.randrange(256)
        elif op == 3:
            n = _number(rng)
            out[at : at + len(n)] = n
        elif op == 4:
            out[at:at] = _number(rng) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 8))
        elif op == 5:
            del out[at : at + rng.randint(1, 64)]
        elif op == 6:
            piece = out[at : at + rng.randint(1, 64)]
            where = rng.randrange(len(out) + 1)
            out[where:where] = piece * rng.randint(1, 4)
        else:
            del out[rng.randrange(len(out) + 1) :]
    return bytes(out)
