"""A synthetic ImageNet-1k for benchmarks/scale.py: ImageNet's sample and shard counts, tiny images.

    ROOT/wds/_info.json, ROOT/wds/imagenet1k-train-0000.tar ...     timm's imagenet-1k-wds layout
    ROOT/parquet/data/train-00000-of-01024.parquet ...             Hugging Face's layout, as
                                                                   `resnext pack` writes it

1,281,167 training and 50,000 validation samples (or `samples` and its share of them) in 1,024
+ 64 shards, the same samples in the same shards in both formats. Labels are spread evenly over
1,000 classes in a seeded order; each image is one of a few distinct 16x16 JPEGs, padded to
`nbytes` with comment segments where asked, so that shards have real sizes and every image
still decodes. The tar headers are written here (a template filled per member: 2 us against
tarfile's 20); the parquet files through `resnext.data.pack`, which sets the layout.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnext.atomic import write_atomic
from resnext.data.pack import pack_split, write_info
from resnext.data.records import NamedBytes
from resnext.data.samples import ImageSet

TRAIN, VAL = 1_281_167, 50_000  # ImageNet-1k's training and validation samples
TRAIN_SHARDS, VAL_SHARDS, CLASSES = 1024, 64, 1000
NAME = "imagenet1k"  # the shard prefix of timm's imagenet-1k-wds
DISTINCT = 16  # distinct JPEGs the samples cycle through
DONE = "_scale.json"  # written last: the tree's arguments; a tree without it is made again


def class_names() -> list[str]:
    """ImageNet-like WordNet ids, in label order."""
    return [f"n{c:08d}" for c in range(CLASSES)]


def jpegs(nbytes: int = 0, seed: int = 0) -> list[bytes]:
    """DISTINCT small RGB JPEGs, each padded to `nbytes` with comment (COM) segments."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(DISTINCT):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(pad_jpeg(buf.getvalue(), nbytes))
    return out


def pad_jpeg(data: bytes, nbytes: int) -> bytes:
    """`data` grown to `nbytes` by comment segments after its start marker (at most 65,533
    bytes of payload each): decoders skip them, so the image is unchanged."""
    segments = []
    need = nbytes - len(data)
    while need > 4:
        payload = min(need - 4, 65_533)
        segments.append(b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + bytes(payload))
        need -= payload + 4
    return data[:2] + b"".join(segments) + data[2:]


def labels_of(n: int, seed: int) -> np.ndarray:
    """`n` labels spread evenly over the classes, in a seeded order."""
    return np.random.default_rng(seed).permutation(np.arange(n) % CLASSES)


def shard_size(n: int, shards: int) -> int:
    """Samples per shard so that `n` samples fill `shards` shards (the last one shorter)."""
    return math.ceil(n / shards)


class SyntheticRecords:
    """Records (data/records.py) of a synthetic split: record i is image i % DISTINCT."""

    def __init__(self, images: list[bytes], labels: np.ndarray, split: str) -> None:
        self.images, self.labels, self.split = images, labels, split

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        c = f"n{int(self.labels[i]):08d}"
        return f"{self.split}/{c}/{c}_{i}.JPEG"

    def open(self, i: int) -> tuple[NamedBytes, str]:
        name = self.name(i)
        return NamedBytes(self.images[i % DISTINCT], name), name

    def take(self, keep: list[int]) -> SyntheticRecords:
        raise NotImplementedError("a synthetic split is packed whole")


_TEMPLATE = bytearray(512)
_TEMPLATE[100:108] = b"0000644\0"  # mode
_TEMPLATE[108:124] = b"0000000\0" * 2  # uid, gid
_TEMPLATE[136:148] = b"%011o\0" % 1_700_000_000  # mtime
_TEMPLATE[148:156] = b" " * 8  # the checksum counts its own field as spaces
_TEMPLATE[156:157] = b"0"  # a regular file
_TEMPLATE[257:265] = b"ustar\x0000"
_TEMPLATE_SUM = sum(_TEMPLATE)


def _member(name: bytes, payload: bytes) -> bytes:
    """One ustar member: its header, the payload, zeros to the next 512-byte block."""
    header = bytearray(_TEMPLATE)
    size = b"%011o\0" % len(payload)
    header[: len(name)] = name
    header[124:136] = size
    header[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(name) + sum(size))
    return bytes(header) + payload + bytes(-len(payload) % 512)


def _tar(records: SyntheticRecords, start: int, stop: int) -> bytes:
    """Samples start..stop-1 as pack writes them: KEY.jpg, KEY.cls, KEY.json."""
    parts = []
    for i in range(start, stop):
        key, label = b"%08d" % i, int(records.labels[i])
        meta = json.dumps({"filename": records.name(i), "label": label}).encode()
        parts += [_member(key + b".jpg", records.images[i % DISTINCT]),
                  _member(key + b".cls", b"%d" % label), _member(key + b".json", meta)]  # fmt: skip
    return b"".join(parts) + bytes(1024)  # the end-of-archive blocks


def write_wds(out: Path, splits: dict[str, tuple[SyntheticRecords, int]]) -> None:
    """Every split as tar shards of the given size, and _info.json."""
    entries = {}
    for split, (records, size) in splits.items():
        files, lengths = [], []
        for k, start in enumerate(range(0, len(records), size)):
            stop = min(start + size, len(records))
            path = out / f"{NAME}-{split}-{k:04d}.tar"
            write_atomic(path, lambda f, r=records, a=start, b=stop: f.write(_tar(r, a, b)))
            files.append(path.name)
            lengths.append(stop - start)
        entries[split] = {"name": split, "num_samples": len(records), "filenames": files,
                          "shard_lengths": lengths}  # fmt: skip
    write_info(out, NAME, class_names(), entries)


def write_parquet(out: Path, splits: dict[str, tuple[SyntheticRecords, int]]) -> None:
    """Every split as parquet files, through `pack`'s own writer."""
    for split, (records, size) in splits.items():
        data = ImageSet(class_names(), torch.from_numpy(records.labels), records=records,
                        split=split)  # fmt: skip
        pack_split(data, "parquet", out, NAME, split, size)


def make_tree(root: Path, samples: int = TRAIN, nbytes: int = 0, seed: int = 0) -> dict:
    """Both formats under `root` (kept when a finished tree of the same arguments is there);
    returns the tree's description (_scale.json) with the seconds each format took to write."""
    val = max(1, round(VAL * samples / TRAIN))
    shards = {"train": max(1, round(TRAIN_SHARDS * samples / TRAIN)),
              "validation": max(1, round(VAL_SHARDS * samples / TRAIN))}  # fmt: skip
    args = {"samples": samples, "val_samples": val, "bytes": nbytes, "seed": seed,
            "shards": shards}  # fmt: skip
    marker = root / DONE
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("args") == args:
            return done
        raise SystemExit(f"{root} holds a tree of other arguments ({done.get('args')}): "
                         "give another --root or delete it")  # fmt: skip
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty and holds no finished tree: give an empty --root")
    images = jpegs(nbytes, seed)
    splits = {}
    for split, n, s in (("train", samples, seed), ("validation", val, seed + 1)):
        records = SyntheticRecords(images, labels_of(n, s), split)
        splits[split] = (records, shard_size(n, shards[split]))
    seconds = {}
    for fmt, write in (("wds", write_wds), ("parquet", write_parquet)):
        began = time.perf_counter()
        write(root / fmt, splits)
        seconds[fmt] = round(time.perf_counter() - began, 1)
        print(f"wrote the {fmt} tree in {seconds[fmt]:.0f} s", flush=True)
    sizes = {fmt: sum(p.stat().st_size for p in (root / fmt).rglob("*") if p.is_file())
             for fmt in ("wds", "parquet")}  # fmt: skip
    done = {"args": args, "write_seconds": seconds, "bytes_on_disk": sizes,
            "image_bytes": [len(b) for b in images]}  # fmt: skip
    write_atomic(marker, lambda f: f.write(json.dumps(done, indent=1).encode()))
    return done
