"""The fuzz targets (tests/fuzz/) stay runnable, and what they found stays found: each finding
is a regular test here or beside its module (test_pages.py, test_tar.py). A finding in a reader
not fixed yet is marked xfail(strict=True): the fix turns it into a passing test."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.run import Findings, run_one
from fuzz.targets import targets

pytest.importorskip("pyarrow")

TARGETS = targets()
# Targets that read in this process on any input; parquet may abort the process inside pyarrow
# (its footers are read in a child, its rows of foreign files here), so it runs on its seeds only.
SAFE = ["image", "info", "tar", "pages", "model"]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_reads_its_own_seeds(tmp_path, name):
    target = TARGETS[name]
    for data in target.seeds(tmp_path):
        target.run(data, tmp_path)  # valid files: a value, no exception at all


@pytest.mark.parametrize("name", SAFE)
def test_damaged_inputs_end_in_documented_outcomes(tmp_path, name):
    target = TARGETS[name]
    findings = Findings(tmp_path / "findings")
    seeds = target.seeds(tmp_path)
    rng = random.Random(name)
    for _ in range(150):
        run_one(target, target.mutate(rng.choice(seeds), rng), tmp_path, findings, True)
    assert not findings.seen


def test_the_runner_counts_executions_and_lists_findings(tmp_path):
    run = Path(__file__).parent / "fuzz" / "run.py"
    out = subprocess.run([sys.executable, str(run), "1", "pages", "--engine", "loop", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    summary = json.loads(out.stdout.splitlines()[-1])
    assert out.returncode == 0, out.stderr
    assert summary["target"] == "pages" and summary["executions"] > 100
    assert summary["findings"] == []


def _info(tmp_path: Path, train: object) -> dict:
    from resnext.data.wds import read_info

    (tmp_path / "x-train-0000.tar").write_bytes(bytes(1024))
    (tmp_path / "_info.json").write_text(json.dumps({"splits": {"train": train}}))
    return read_info(str(tmp_path))


@pytest.mark.parametrize(
    "train",
    [
        ["x-train-0000.tar"],  # the split a list (AttributeError)
        {"filenames": [7]},  # a file name a number (TypeError)
        {"filenames": ["x-train-0000.tar"], "shard_lengths": [[1]]},  # TypeError
    ],
)
def test_info_fields_of_the_wrong_type_are_one_line_naming_the_file(tmp_path, train):
    """Found by the fuzzer (info target)."""
    from resnext.data.wds import split_shards

    with pytest.raises(ValueError, match="_info.json"):
        split_shards(str(tmp_path), "train", _info(tmp_path, train))


def _parquet(path: Path, labels: list[int], names: bool = True) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from resnext.data.parquet import hf_metadata

    images = pa.array([{"bytes": b"x", "path": "x.png"}] * len(labels),
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    if names:
        table = table.replace_schema_metadata(hf_metadata(["a", "b"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1, compression="none", use_dictionary=False)
    return path.read_bytes()


def test_a_huge_label_without_class_names_is_one_line(tmp_path):
    """Found by the fuzzer (parquet target): a label of 2^48 in a file whose ClassLabel was
    damaged built 2^48 class names (20 GB, then killed). 2,000,000 stands for it here."""
    from resnext.data.datasets import load_dataset

    _parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [0, 1, 2_000_000], names=False)
    with pytest.raises(ValueError, match="2000000"):
        load_dataset("parquet", str(tmp_path), "train", in_memory="no")


def test_a_footer_that_aborts_pyarrow_is_one_line(tmp_path):
    """Found by the fuzzer (parquet target), one byte of a packed file: the `image` struct's
    repetition written as an i64 field. pyarrow 26's ColumnChunkMetaData then throws a C++
    exception nothing catches; the reader must survive it and name the file."""
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    data = _parquet(path, [0, 1])
    at = data.index(b"\x00\x35\x02\x18\x05image")
    path.write_bytes(data[: at + 1] + b"\x36" + data[at + 2 :])
    code = f"from resnext.data.datasets import load_dataset; load_dataset('parquet', {str(tmp_path)!r}, 'train')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "ValueError" in out.stderr, (out.returncode, out.stderr[-300:])


def _packed_parquet(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    return path, _parquet(path, [0, 1])


def test_an_arrow_schema_pyarrow_cannot_build_is_one_line(tmp_path):
    """Found by the fuzzer (parquet target), one byte of the file's embedded Arrow schema: the
    label's integer width 64 read as 37,952 bits (here 128)."""
    import base64
    import re

    from resnext.data.datasets import load_dataset

    path, data = _packed_parquet(tmp_path)
    found = re.compile(rb"[A-Za-z0-9+/=]{40,}").search(data, data.index(b"ARROW:schema"))
    schema = bytearray(base64.b64decode(found.group()))
    at = schema.index(b"\x01\x40\x00\x00\x00") + 1  # the label's Int: signed, 64 bits
    schema[at : at + 4] = (128).to_bytes(4, "little")
    path.write_bytes(data[: found.start()] + base64.b64encode(schema) + data[found.end() :])
    with pytest.raises(ValueError, match="parquet"):
        load_dataset("parquet", str(tmp_path), "train", in_memory="no")


def test_a_row_group_shorter_than_its_metadata_is_a_bad_sample(tmp_path):
    """Found by the fuzzer (parquet target), one byte: the first data page's type made an index
    page, which pages.py leaves to pyarrow, which reads no row from it."""
    import pyarrow.parquet as pq

    from resnext.data.bad_images import BadImageError
    from resnext.data.datasets import load_dataset
    from resnext.data.parquet import chunk_index

    path, data = _packed_parquet(tmp_path)
    (offset, _), _ = chunk_index(pq.ParquetFile(path))[0]
    assert data[offset : offset + 2] == b"\x15\x00"  # page type: a data page
    path.write_bytes(data[: offset + 1] + b"\x02" + data[offset + 2 :])  # 1: an index page
    with pytest.raises(BadImageError, match=f"bad image {path}:0: .*fewer than its metadata"):
        load_dataset("parquet", str(tmp_path), "train", in_memory="no", bad_images="error")


def _model(tmp_path: Path) -> Path:
    import torch

    from resnext.files.model_file import save_model_file

    return save_model_file(tmp_path / "m.pt", {"model": {"w": torch.zeros(2)}, "model_name": "x"})


def test_a_zip_of_an_unsupported_version_is_one_line(tmp_path):
    """Found by the fuzzer (model target): "version needed to extract" 12.8 in the central
    directory of a torch zip."""
    from resnext.files.model_file import CheckpointError, read_model_file

    path = _model(tmp_path)
    data = path.read_bytes()
    at = data.index(b"PK\x01\x02") + 6
    path.write_bytes(data[:at] + (128).to_bytes(2, "little") + data[at + 2 :])
    with pytest.raises(CheckpointError, match="m.pt"):
        read_model_file(path)


def test_a_refused_pickle_with_a_multi_disk_zip_tail_is_one_line(tmp_path):
    """Found by the fuzzer (model target): a pickle the weights-only unpickler refuses, whose
    tail holds a zip64 locator naming 2 disks and an end-of-directory record."""
    import struct

    from resnext.files.model_file import CheckpointError, read_model_file

    path = tmp_path / "m.pt"
    tail = b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 2) + b"PK\x05\x06" + bytes(18)
    path.write_bytes(b"\x80\x02cos\nsystem\nq\x00." + tail)
    with pytest.raises(CheckpointError, match="m.pt"):
        read_model_file(path)
