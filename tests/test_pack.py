"""`resnext pack` stopped part-way resumes after its last complete shard, and shows progress.

The reference is an uninterrupted pack of the same folder: the resumed one must be the same
files, byte for byte, having read only the images after the last complete shard again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from resnext.data import pack
from resnext.data.pack import pack_dataset

from conftest import write_photo_folder

pytest.importorskip("pyarrow")


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pack")
    write_photo_folder(root / "folder", ("a", "b"), 5, ("train", "val"), size=(48, 40))
    return root / "folder"


class Stop(Exception):
    pass


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
@pytest.mark.parametrize("stop_at", [1, 2, 4])  # the shard whose writing fails (train has 4)
def test_a_stopped_pack_resumes_after_its_last_complete_shard(
    folder, tmp_path, monkeypatch, fmt, stop_at
):
    whole = pack_dataset("folder", str(folder), fmt, str(tmp_path / "whole"), "x", 3)
    form = pack.FORMATS[fmt]
    written = []

    def failing(f, chunk, data):
        if len(written) + 1 == stop_at:
            raise Stop
        written.append([i for i, *_ in chunk])
        return form.write(f, chunk, data)

    monkeypatch.setitem(pack.FORMATS, fmt, pack.Format(form.path, failing, form.numbered))
    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        pack_dataset("folder", str(folder), fmt, str(out), "x", 3)
    assert (out / pack.STATE).is_file()  # the progress of the shards that were complete
    (out / ".x-train-0009.tar.abc.tmp").write_bytes(b"torn")  # a write killed outright
    monkeypatch.setitem(pack.FORMATS, fmt, form)
    read = []
    real = pack.encoded

    def counting(data, start=0):
        for record in real(data, start):
            read.append((data.split, record[0]))
            yield record

    monkeypatch.setattr(pack, "encoded", counting)
    again = pack_dataset("folder", str(folder), fmt, str(out), "x", 3)
    assert again == whole and files_of(out) == files_of(tmp_path / "whole")
    train_read = [i for split, i in read if split == "train"]
    done = sum(len(w) for w in written)
    assert train_read == list(range(done, 10))  # only the images after the complete shards


def test_a_folder_with_another_pack_s_progress_is_refused(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / pack.STATE).write_text('{"args": {"format": "wds"}}')
    with pytest.raises(ValueError, match="unfinished pack of other arguments"):
        pack_dataset("folder", str(folder), "parquet", str(out), "x", 3)
    (out / pack.STATE).unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not an empty folder"):
        pack_dataset("folder", str(folder), "wds", str(out), "x", 3)
    assert files_of(out) == {"notes.txt": b"mine"}


def test_progress_names_the_rate_and_the_time_left(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pack, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="resnext.data.pack"):
        pack_dataset("folder", str(folder), "wds", str(tmp_path / "out"), "x", 3)
    lines = [r.getMessage() for r in caplog.records if "images/s" in r.getMessage()]
    assert lines[0].startswith("train: 1 of 10 images (") and "min left)" in lines[0]
    assert lines[-1].startswith("validation: 10 of 10 images (")
