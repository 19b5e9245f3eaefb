"""Every input means what it says: the rules every file format shares (datasets.load_files, the
bad-image policy) and the edges of each reader, checked on data written here, format by format.

References independent of our code: webdataset's own grouping of tar members into samples,
pyarrow for parquet, and Hugging Face `datasets` for the parquet files it writes itself.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from resnext.data.datasets import load_dataset

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


def jpeg(k: int, size: int = 40) -> bytes:
    """A distinct small JPEG for each `k`."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (37 * k % 256, 90 + k % 100, 200 - 7 * k % 200)).save(
        out, "JPEG"
    )
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            add(tar, name, payload)
    return path


def write_info(root: Path, splits: dict[str, list[str]], **extra) -> None:
    """`_info.json` naming each split's shards, their counts left out (the shards have them)."""
    info = {"name": "x", **extra,
            "splits": {s: {"name": s, "filenames": f} for s, f in splits.items()}}  # fmt: skip
    (root / "_info.json").write_text(json.dumps(info))


def write_parquet(path: Path, images: list[bytes | None], labels: list, classes=None,
                  paths: list[str | None] | None = None, label_type=None) -> Path:  # fmt: skip
    from resnext.data.parquet import hf_metadata

    image = pa.StructArray.from_arrays(
        [pa.array(images, pa.binary()), pa.array(paths or ["x.jpg"] * len(images), pa.string())],
        names=["bytes", "path"],
    )
    table = pa.table({"image": image, "label": pa.array(labels, label_type)})
    if classes:
        table = table.replace_schema_metadata(hf_metadata(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def records(data) -> list[tuple[bytes, int]]:
    """(encoded image, label) of every sample of a set read by record."""
    return [(data.open(i)[0].read(), int(data.labels[i])) for i in range(len(data))]


# 1. A sample is a run of consecutive members with one key (webdataset's rule).

_LAYOUTS = {
    "a key again later": [("k0.jpg", jpeg(0)), ("k0.cls", b"0"), ("k1.jpg", jpeg(1)),
                          ("k1.cls", b"1"), ("k0.jpg", jpeg(2)), ("k0.cls", b"2")],
    "label first, a key thrice": [("a.cls", b"1"), ("a.jpg", jpeg(3)), ("b.cls", b"0"),
                                  ("b.png", jpeg(4)), ("a.cls", b"2"), ("a.jpg", jpeg(5)),
                                  ("c.jpg", jpeg(6)), ("c.cls", b"0"), ("a.JPG", jpeg(7)),
                                  ("a.cls", b"1")],
    "a later run without its label": [("d/x.jpg", jpeg(8)), ("d/x.cls", b"2"),
                                      ("d/y.jpg", jpeg(9)), ("d/y.cls", b"1"),
                                      ("d/x.jpg", jpeg(10)), ("d/z.cls", b"0"),
                                      ("d/z.jpg", jpeg(11))],
    "two images of one key in one run": [("s.jpg", jpeg(12)), ("s.jpg", jpeg(13)),
                                         ("s.cls", b"1"), ("t.jpg", jpeg(14)), ("t.cls", b"0"),
                                         ("u.jpg", jpeg(15)), ("u.cls", b"2"), ("u.cls", b"0")],
}  # fmt: skip


def _webdataset_samples(path: Path) -> tuple[list[tuple[bytes, int]], list[str]]:
    """webdataset's samples that hold an image and a label, and the keys it calls duplicates."""
    wt = pytest.importorskip("webdataset.tariterators")
    with open(path, "rb") as f:
        files = [dict(m, __url__=str(path)) for m in wt.tar_file_iterator(f)]
    duplicates: list[str] = []

    def handler(e: Exception) -> bool:
        duplicates.append(str(e.args[0]).split(":")[0].split(".")[0])
        return True  # go on, as webdataset's warn_and_continue does

    out = []
    for s in wt.group_by_keys(files, handler=handler):
        image = next((s[e] for e in ("jpg", "png") if e in s), None)
        if image is not None and "cls" in s and s["__key__"] not in duplicates:
            out.append((image, int(s["cls"])))
    return out, duplicates


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_tar_samples_are_grouped_as_webdataset_groups_them(tmp_path, layout, caplog):
    """Our samples are webdataset's; a sample it cannot pair is a named bad sample."""
    shard = write_tar(tmp_path / "x-train-0000.tar", _LAYOUTS[layout])
    want, duplicates = _webdataset_samples(shard)
    data = load_dataset("wds", str(tmp_path), "train", in_memory="no")
    assert records(data) == want
    named = {f.split(":", 1)[1] for f in data.bad.files}
    for key in duplicates:  # webdataset raises; we name that sample and read the others
        assert key in named and f"two {key}." in caplog.text
    if layout == "a later run without its label":
        assert named == {"d/x#2"} and "no .cls label" in caplog.text
