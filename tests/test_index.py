"""The index of a sharded split (data/index.py): built once, by one process, and read back as
what a fresh scan of the shards finds; a changed shard or a damaged index is never trusted.

The reference is the readers' own scan (`wds.scan`, `parquet.scan`), run on the same files
without any index, and for the shards the standard library's tarfile.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from resnext.data import index, parquet, wds
from resnext.data.bad_images import BadImageError, BadImages
from resnext.data.datasets import load_dataset
from resnext.data.pack import pack_dataset

from conftest import shared_scope, write_photo_folder

pytest.importorskip("pyarrow")
SCANS = {"wds": wds, "parquet": parquet}


@pytest.fixture(scope=shared_scope)
def packed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("index")
    folder = write_photo_folder(root / "folder", ("a", "b", "c"), 4, ("train", "val"), (40, 32))
    for fmt in SCANS:
        pack_dataset("folder", str(folder), fmt, str(root / fmt), "x", 5)
    return {"folder": folder, **{fmt: root / fmt for fmt in SCANS}}


def fresh(fmt: str, root: Path, split: str = "train"):
    """What the reader finds without an index, and the bad samples it notes."""
    noted = index.Recorder()
    return SCANS[fmt].scan(str(root), split, noted), noted.noted


def same(a, b) -> None:
    ra, rb = a.records.to_arrays(), b.records.to_arrays()
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    assert (a.classes, a.source, a.empty) == (b.classes, b.source, b.empty)
    assert [a.records.name(i) for i in range(len(a.records))] == [
        b.records.name(i) for i in range(len(b.records))
    ]


def copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fmt", list(SCANS))
def test_pack_writes_the_index_and_the_first_run_reads_it_without_a_scan(packed, monkeypatch, fmt):
    for split in ("train", "validation"):
        assert (packed[fmt] / index.FOLDER / f"{split}.npz").is_file()
    want, _ = fresh(fmt, packed[fmt])

    def no_scan(*args):
        raise AssertionError("scanned although the index is up to date")

    monkeypatch.setattr(SCANS[fmt], "scan", no_scan)
    got = SCANS[fmt].load(str(packed[fmt]), "train", BadImages())
    same(got, want)
    data = load_dataset(fmt, str(packed[fmt]), "train", in_memory="no")
    assert [data.open(i)[0].read() for i in range(len(data))] == [
        p.read_bytes()
        for c in ("a", "b", "c")
        for p in sorted((packed["folder"] / "train" / c).iterdir())
    ]


def test_an_index_of_foreign_and_packed_parquet_reads_every_row_as_pyarrow_does(
    packed, tmp_path, monkeypatch
):
    """A foreign file (rows read a row group at a time) before a packed one (rows read
    directly): the index keeps each file's kind, and reads each row's bytes back."""
    import shutil

    import pyarrow.parquet as pq

    from test_input_rules import jpeg, write_parquet

    data = tmp_path / "mixed" / "data"
    write_parquet(data / "train-00000-of-00002.parquet", [jpeg(i) for i in range(4)],
                  [0, 1, 2, 0], ["a", "b", "c"])  # fmt: skip
    first = sorted((packed["parquet"] / "data").glob("train-*.parquet"))[0]
    shutil.copy(first, data / "train-00001-of-00002.parquet")
    want = [row["bytes"] for f in sorted(data.glob("*.parquet"))
            for row in pq.read_table(f).column("image").to_pylist()]  # fmt: skip
    scanned = parquet.load(str(data.parent), "train", BadImages())
    assert [c is None for c in scanned.records.chunks] == [True, False]

    def no_scan(*args):
        raise AssertionError("scanned although the index is up to date")

    monkeypatch.setattr(parquet, "scan", no_scan)
    for found in (scanned, parquet.load(str(data.parent), "train", BadImages())):
        assert [found.records.read(i) for i in range(len(want))] == want


def tar_with_bad_samples(folder: Path) -> Path:
    """A shard of six samples: two without a label, one without an image (other than timm's
    layout: no _info.json, so the shards are found by name)."""
    folder.mkdir()
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(jpeg, "JPEG")
    with tarfile.open(folder / "y-train-0000.tar", "w") as tar:
        for k in range(6):
            for ext, payload in (("jpg", jpeg.getvalue()), ("cls", str(k % 2).encode())):
                if (k, ext) in ((1, "cls"), (3, "cls"), (4, "jpg")):
                    continue
                member = tarfile.TarInfo(f"{k:03d}.{ext}")
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
    return folder


def test_bad_samples_are_in_the_index_and_noted_again_at_every_load(tmp_path, caplog):
    data = tar_with_bad_samples(tmp_path / "shards")
    want, noted = fresh("wds", data)
    assert len(noted) == 3
    for _ in range(2):  # built, then read
        caplog.clear()
        bad = BadImages()
        with caplog.at_level(logging.WARNING, logger="resnext.data"):
            got = wds.load(str(data), "train", bad)
        same(got, want)
        assert bad.files == {names[0] for names, _, _ in noted}
        assert len([r for r in caplog.records if "skipping bad image" in r.getMessage()]) == 3
        assert f"skipping bad image {data / 'y-train-0000.tar'}:004: no image\n" in caplog.text
    with pytest.raises(BadImageError, match=r"y-train-0000.tar:001: no \.cls label"):
        wds.load(str(data), "train", BadImages("error"))


@pytest.mark.parametrize("fmt", list(SCANS))
@pytest.mark.parametrize("change", ["replaced", "truncated", "added"])
def test_a_changed_shard_makes_the_index_stale(packed, tmp_path, caplog, fmt, change):
    data = copy(packed[fmt], tmp_path / fmt)
    files = sorted(p for p in data.rglob("*train-*") if p.suffix in (".tar", ".parquet"))
    victim = files[1]
    if change == "replaced":  # another shard's bytes under this one's name: same split, new time
        victim.write_bytes(files[0].read_bytes())
        os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    elif change == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        if fmt == "parquet":
            pytest.skip("parquet names count their files (-of-NNNNN): an added one is an error")
        (data / "_info.json").unlink()  # found by name now: the key's metadata file is gone
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        if change == "truncated":
            with pytest.raises(ValueError, match=str(victim)):
                SCANS[fmt].load(str(data), "train", BadImages())
        else:
            got = SCANS[fmt].load(str(data), "train", BadImages())
            same(got, fresh(fmt, data)[0])
    stale = [r.getMessage() for r in caplog.records if "is stale" in r.getMessage()]
    assert len(stale) == 1 and str(data / index.FOLDER / "train.npz") in stale[0]


@pytest.mark.parametrize("fmt", list(SCANS))
@pytest.mark.parametrize("damage", ["garbage", "cut", "empty"])
def test_a_damaged_index_is_rebuilt_with_one_warning(packed, tmp_path, caplog, fmt, damage):
    data = copy(packed[fmt], tmp_path / fmt)
    path = data / index.FOLDER / "train.npz"
    raw = path.read_bytes()
    path.write_bytes({"garbage": b"not an index" * 10, "cut": raw[: len(raw) // 2],
                      "empty": b""}[damage])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        got = SCANS[fmt].load(str(data), "train", BadImages())
    same(got, fresh(fmt, data)[0])
    assert len([r for r in caplog.records if "is damaged" in r.getMessage()]) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        SCANS[fmt].load(str(data), "train", BadImages())  # rebuilt: read quietly
    assert not caplog.records


def test_an_unwritable_data_folder_keeps_its_index_in_the_user_cache(packed, tmp_path, monkeypatch):
    data = copy(packed["wds"], tmp_path / "wds")
    (data / index.FOLDER / "train.npz").unlink()
    monkeypatch.setattr(index, "_writable", lambda base: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wds.load(str(data), "train", BadImages())
    assert not (data / index.FOLDER / "train.npz").exists()
    cached = list((tmp_path / "cache" / "resnext" / "index").glob("wds-*/train.npz"))
    assert len(cached) == 1 and index.index_path(str(data), "train") == cached[0]


LOAD = textwrap.dedent(
    """
    import logging, os, sys, time
    from resnext.data import parquet, wds
    from resnext.data.datasets import load_dataset
    built = []
    class Count(logging.Handler):
        def emit(self, record):
            built.append("indexing the" in record.getMessage())
    logging.getLogger("resnext.data.index").addHandler(Count())
    logging.getLogger("resnext.data.index").setLevel(logging.INFO)
    for reader in (wds, parquet):  # a scan slow enough for the two ranks to meet in it
        def slow(*args, scan=reader.scan):
            time.sleep(3)
            return scan(*args)
        reader.scan = slow
    data = load_dataset(sys.argv[1], sys.argv[2], "train", in_memory="no")
    with open(os.path.join(sys.argv[3], "rank" + os.environ["RANK"]), "w") as f:
        f.write(f"{sum(built)} {len(data)}")
    """
)


@pytest.mark.parametrize("fmt", list(SCANS))
def test_two_ranks_under_torchrun_scan_once(packed, tmp_path, fmt):
    data = copy(packed[fmt], tmp_path / fmt)
    for p in (data / index.FOLDER).iterdir():
        p.unlink()
    script = tmp_path / "load.py"
    script.write_text(LOAD)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), fmt, str(data), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ranks = [(tmp_path / f"rank{r}").read_text().split() for r in (0, 1)]
    assert sorted(int(built) for built, _ in ranks) == [0, 1]  # one scanned, one read its index
    assert [int(n) for _, n in ranks] == [12, 12]
