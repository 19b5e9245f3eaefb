"""The fuzz targets: each reader of untrusted files, seeded with valid files the project writes,
and the outcomes its documentation allows. Anything else an input makes it do is a finding.

    image    data/images.decode_image           a PIL image, or OSError / ValueError
    tar      data/wds.scan_tar (data/tar.py)     samples as tarfile reads them, or ValueError
    info     data/wds.read_info + split_shards   shards and counts, or ValueError
    parquet  load_dataset("parquet") + reads     a set, ValueError; per row a bad sample
    pages    data/pages.plain_value              bytes or None, or PageError
    model    files/model_file.read_model_file    a dict, or CheckpointError (a ValueError)
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuzz.mutate import mutate

MAX_PIXELS = 4_000_000  # pixel bombs within the documented limit cost seconds per input


@dataclass(frozen=True)
class Target:
    """`seeds(work)` writes valid files under the folder `work` and returns their bytes;
    `run(data, work)` reads one input and raises only `allowed`; `mutate` damages a seed."""

    name: str
    seeds: Callable[[Path], list[bytes]]
    run: Callable[[bytes, Path], object]
    allowed: tuple[type[BaseException], ...]
    mutate: Callable[[bytes, random.Random], bytes] = mutate


def _images() -> list[bytes]:
    """Small images in the formats and modes decode_image converts (PIL writes them)."""
    from PIL import Image

    rng = random.Random(0)
    rgb = Image.frombytes("RGB", (13, 9), rng.randbytes(13 * 9 * 3))
    out = []
    for image, fmt, kw in [
        (rgb, "JPEG", {"quality": 80}),
        (rgb.convert("L"), "JPEG", {}),
        (rgb, "PNG", {}),
        (rgb.convert("RGBA"), "PNG", {}),
        (rgb.convert("P"), "PNG", {"transparency": 0}),
        (Image.frombytes("I;16", (5, 4), rng.randbytes(40)), "PNG", {}),
        (rgb, "GIF", {"save_all": True, "append_images": [rgb.rotate(90)]}),
        (rgb, "BMP", {}),
        (rgb, "WEBP", {"quality": 50}),
        (rgb, "TIFF", {"compression": "tiff_lzw"}),
        (rgb.convert("CMYK"), "TIFF", {}),
        (rgb, "PPM", {}),
    ]:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: width and height swap
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=exif)
    return [*out, buf.getvalue()]


def _decode(data: bytes, work: Path):
    from resnext.data.images import decode_image

    reduce = (lambda w, h: 4) if len(data) % 3 == 0 else None  # JPEG draft decoding too
    return decode_image(io.BytesIO(data), 1 + 2 * (len(data) % 2), reduce=reduce,
                        max_pixels=MAX_PIXELS)  # fmt: skip


def _packed(work: Path, fmt: str) -> Path:
    """A tiny image folder (2 classes; train 2, val 1 each) packed by `resnext pack`."""
    from PIL import Image

    from resnext.data.pack import pack_dataset

    out = work / f"packed-{fmt}"
    if out.exists():
        return out
    rng = random.Random(1)
    for split, count in (("train", 2), ("val", 1)):
        for c in ("a", "b"):
            (work / "folder" / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.frombytes("RGB", (6, 5), rng.randbytes(90))
                image.save(work / "folder" / split / c / f"{i}.png")
    pack_dataset("folder", str(work / "folder"), fmt, str(out), shard_size=2)
    return out


def _tar_seeds(work: Path) -> list[bytes]:
    shards = sorted(_packed(work, "wds").glob("*.tar"))
    out = [p.read_bytes() for p in shards[:2]]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):  # long names, pax records
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name in ("d" * 120 + "/k0.png", "k0.cls", "é\udcff.png", "é\udcff.cls"):
                info = tarfile.TarInfo(name)
                info.size = 3
                tar.addfile(info, io.BytesIO(b"0\n0"))
        out.append(buf.getvalue())
    return out


def _scan_tar(data: bytes, work: Path):
    from resnext.data.tar import tar_members
    from resnext.data.wds import scan_tar

    path = work / "x.tar"
    path.write_bytes(data)
    samples = scan_tar(path)
    ours = list(tar_members(io.BytesIO(data), len(data)))
    want = _tarfile_members(data)
    if ours != want:
        raise AssertionError(f"tar_members read {ours[:3]}..., tarfile {str(want)[:200]}")
    return samples


def _tarfile_members(data: bytes):
    regular = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return [(m.name, m.offset_data, m.size) for m in tar if m.type in regular]
    except Exception as e:  # noqa: BLE001 - tarfile refused what tar_members read
        return f"an error: {type(e).__name__}: {e}"


def _info_seeds(work: Path) -> list[bytes]:
    root = _packed(work, "wds")
    info = json.loads((root / "_info.json").read_text())
    bare = {"splits": {"train": {"filenames": info["splits"]["train"]["filenames"]}}}
    return [(root / "_info.json").read_bytes(), json.dumps(bare).encode(), b"{}"]


_JSON_VALUES = (None, True, 0, -1, 1.5, 2**64, float("nan"), "", "x", "../x", "a/b.tar", [],
                ["nine"], [1, 2], {}, {"name": 1}, [{}])  # fmt: skip


def json_mutate(data: bytes, rng: random.Random) -> bytes:
    """A JSON value with one part replaced by a value of another type (half the time), else
    bytes damaged: what a hand-edited or half-written _info.json holds."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if value is None or rng.random() < 0.5:
        return mutate(data, rng)
    slots = []  # (container, key) of every part

    def walk(v):
        for k in range(len(v)) if isinstance(v, list) else v if isinstance(v, dict) else ():
            slots.append((v, k))
            walk(v[k])

    walk(value)
    if not slots:
        return json.dumps(rng.choice(_JSON_VALUES)).encode()
    container, key = rng.choice(slots)
    container[key] = rng.choice(_JSON_VALUES)
    return json.dumps(value).encode()


def _read_info(data: bytes, work: Path):
    from resnext.data.wds import read_info, split_shards

    root = _packed(work, "wds")
    (root / "_info.json").write_bytes(data)
    info = read_info(str(root))
    out = []
    for split in ("train", "validation", "test"):
        try:
            out.append(split_shards(str(root), split, info))
        except ValueError:
            pass
    return out


def _parquet_seeds(work: Path) -> list[bytes]:
    files = sorted(_packed(work, "parquet").glob("data/*.parquet"))
    return [p.read_bytes() for p in files]


def _load_parquet(data: bytes, work: Path):
    from resnext.data.bad_images import BAD_IMAGE_ERRORS
    from resnext.data.datasets import load_dataset
    from resnext.data.images import decode_image

    root = work / "parquet"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "train-00000-of-00001.parquet").write_bytes(data)
    dataset = load_dataset("parquet", str(root), "train", in_memory="no")
    for i in range(min(len(dataset), 8)):
        try:  # as the loader reads a sample: an error here is a named bad sample
            decode_image(dataset.open(i)[0], 3, max_pixels=MAX_PIXELS)
        except BAD_IMAGE_ERRORS:
            pass
    return dataset


def _page_seeds(work: Path) -> list[bytes]:
    import pyarrow.parquet as pq

    from resnext.data.parquet import chunk_index

    out = []
    for path in sorted(_packed(work, "parquet").glob("data/*.parquet")):
        chunks, _ = chunk_index(pq.ParquetFile(path))
        raw = path.read_bytes()
        out += [raw[o : o + n] for o, n in chunks]
    return out


def _plain_value(data: bytes, work: Path):
    from resnext.data.pages import plain_value

    value = plain_value(data, len(data) % 3)
    if value is not None and not isinstance(value, bytes):
        raise AssertionError(f"a {type(value).__name__}, not bytes")
    return value


def _model_seeds(work: Path) -> list[bytes]:
    import torch

    from resnext.files.model_file import save_model_file, save_safetensors

    weights = {"conv1.weight": torch.randn(2, 1, 3, 3), "fc.bias": torch.zeros(2)}
    meta = {"model_name": "x", "class_names": ["a", "b"], "epoch": 1}
    save_model_file(work / "m.pt", {"model": weights, **meta})
    save_safetensors(work / "m.safetensors", weights, meta)
    with open(work / "legacy.pt", "wb") as f:
        torch.save(weights, f, _use_new_zipfile_serialization=False)
    return [(work / n).read_bytes() for n in ("m.pt", "m.safetensors", "legacy.pt")]


def _read_model(data: bytes, work: Path):
    from resnext.files.model_file import read_model_file

    path = work / ("input.pt" if len(data) % 2 else "input.safetensors")
    path.write_bytes(data)
    return read_model_file(path)


def targets() -> dict[str, Target]:
    from resnext.data.pages import PageError

    return {
        t.name: t
        for t in [
            Target("image", lambda work: _images(), _decode, (OSError, ValueError)),
            Target("tar", _tar_seeds, _scan_tar, (ValueError,)),
            Target("info", _info_seeds, _read_info, (ValueError,), json_mutate),
            Target("parquet", _parquet_seeds, _load_parquet, (ValueError,)),
            Target("pages", _page_seeds, _plain_value, (PageError,)),
            Target("model", _model_seeds, _read_model, (ValueError,)),
        ]
    }
