"""`resnext pack` stopped part-way resumes after its last complete shard, and shows progress.

The reference is an uninterrupted pack of the same folder: the resumed one must be the same
files, byte for byte, having read only the images after the last complete shard again.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resnext.data import pack
from resnext.data.pack import pack_dataset

from conftest import UNDER_MUTMUT, shared_scope, write_photo_folder

pytest.importorskip("pyarrow")


def files_of(root: Path) -> dict[str, bytes]:
    """Every file's bytes; the index (`_index/`) by its records, not its bytes (it records the
    shards' modification times)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and "_index" not in p.parts:
            out[p.relative_to(root).as_posix()] = p.read_bytes()
        elif p.suffix == ".npz":
            with np.load(p) as z:
                out[p.relative_to(root).as_posix()] = {
                    k: z[k].tobytes() for k in z.files if k != "meta"
                }
    return out


@pytest.fixture(scope=shared_scope)
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pack")
    write_photo_folder(root / "folder", ("a", "b"), 5, ("train", "val"), size=(48, 40))
    return root / "folder"


class Stop(Exception):
    pass


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
@pytest.mark.parametrize("stop_at", [1, 2, 4, 5, 7])  # the shard that fails: train 1-4, val 5-8
def test_a_stopped_pack_resumes_after_its_last_complete_shard(
    folder, tmp_path, monkeypatch, caplog, fmt, stop_at
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
    torn = (
        (out / "data" / ".train-00009.parquet.unnumbered.abc.tmp")
        if fmt == "parquet"
        else (out / ".x-train-0009.tar.abc.tmp")
    )
    torn.write_bytes(b"torn")  # a write killed outright
    monkeypatch.setitem(pack.FORMATS, fmt, form)
    read = []
    real = pack.encoded

    def counting(data, start=0):
        for record in real(data, start):
            read.append((data.split, record[0]))
            yield record

    monkeypatch.setattr(pack, "encoded", counting)
    with caplog.at_level(logging.INFO, logger="resnext.data.pack"):
        again = pack_dataset("folder", str(folder), fmt, str(out), "x", 3)
    assert f"resuming the unfinished pack in {out}\n" in caplog.text
    assert again == whole and files_of(out) == files_of(tmp_path / "whole")
    done = sum(len(w) for w in written)  # only the images after the complete shards are read
    assert read == [("train", i) for i in range(min(done, 10), 10)] + [
        ("val", i) for i in range(max(done - 10, 0), 10)
    ]


def test_a_stopped_pack_run_again_with_other_arguments_is_refused(folder, tmp_path, monkeypatch):
    import shutil

    form = pack.FORMATS["wds"]

    def failing(f, chunk, data):
        raise Stop

    out = tmp_path / "out"
    monkeypatch.setitem(pack.FORMATS, "wds", pack.Format(form.path, failing, form.numbered))
    with pytest.raises(Stop):
        pack_dataset("folder", str(folder), "wds", str(out), "x", 3)
    monkeypatch.setitem(pack.FORMATS, "wds", form)
    state = files_of(out)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    others = {"format": ("folder", str(folder), "parquet", str(out), "x", 3, 0),
              "root": ("folder", str(copy), "wds", str(out), "x", 3, 0),
              "name": ("folder", str(folder), "wds", str(out), "y", 3, 0),
              "shard size": ("folder", str(folder), "wds", str(out), "x", 4, 0),
              "class count": ("folder", str(folder), "wds", str(out), "x", 3, 2)}  # fmt: skip
    for what, args in others.items():
        with pytest.raises(ValueError, match="holds an unfinished pack of other arguments: {"):
            pack_dataset(*args)
        assert files_of(out) == state, what  # nothing of it touched
    assert (
        pack_dataset("folder", str(folder), "wds", str(out), "x", 3)["train"]["num_samples"] == 10
    )


def test_pack_arguments_out_of_range_are_one_line_each(folder, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(
        ValueError, match=r"^format must be one of \('wds', 'parquet'\), got 'zip'$"
    ):
        pack_dataset("folder", str(folder), "zip", out, "x", 3)
    with pytest.raises(ValueError, match=r"^--shard-size must be positive, got 0$"):
        pack_dataset("folder", str(folder), "wds", out, "x", 0)
    with pytest.raises(ValueError, match=r"^--num-classes must not be negative, got -1$"):
        pack_dataset("folder", str(folder), "wds", out, "x", 3, -1)
    with pytest.raises(TypeError, match=r"^pack_dataset\(\) got unexpected arguments \['sise'\]$"):
        pack_dataset("folder", str(folder), "wds", out, "x", sise=3)
    assert not (tmp_path / "out").exists()
    one = pack_dataset("folder", str(folder), "wds", out, "x", 1)  # the smallest shard
    assert one["train"]["shard_lengths"] == [1] * 10


def test_the_old_size_argument_still_packs_with_a_deprecation_warning(folder, tmp_path):
    with pytest.warns(DeprecationWarning, match=r"^pack_dataset\(size=\) is now shard_size=$") as w:
        old = pack_dataset("folder", str(folder), "wds", str(tmp_path / "old"), "x", size=4)
    assert w[0].filename == __file__ or UNDER_MUTMUT  # the caller (mutmut adds a frame)
    new = pack_dataset("folder", str(folder), "wds", str(tmp_path / "new"), "x", shard_size=4)
    assert old == new and files_of(tmp_path / "old") == files_of(tmp_path / "new")


def test_a_held_out_split_of_other_classes_is_refused_naming_both(tmp_path):
    root = tmp_path / "folder"
    write_photo_folder(root, ("a", "b"), 2, ("train",), size=(48, 40))
    write_photo_folder(root, ("a", "c"), 2, ("val",), size=(48, 40))
    with pytest.raises(ValueError) as e:
        pack_dataset("folder", str(root), "wds", str(tmp_path / "out"), "x", 3)
    assert str(e.value) == f"the val split of {root} has other classes than the train split"


def test_an_unlabelled_validation_split_is_left_out_and_the_test_split_packed(tmp_path, caplog):
    """The held-out splits take the training split's class count, whatever labels they hold."""
    from test_input_rules import jpeg, write_parquet

    root = tmp_path / "hf"
    labels = {"train": [0, 1, 2, 0, 1, 2], "validation": [-1, -1], "test": [0, 1]}
    for split, ys in labels.items():
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet",
                      [jpeg(i) for i in range(len(ys))], ys)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="resnext.data.pack"):
        splits = pack_dataset("parquet", str(root), "wds", str(tmp_path / "out"), "x", 4)
    assert {s: v["num_samples"] for s, v in splits.items()} == {"train": 6, "test": 2}
    said = [r.getMessage() for r in caplog.records if r.name == "resnext.data.pack"]
    assert len(said) == 1, said
    assert said[0].startswith(f"not packing the val split: no readable rows in the validation "
                              f"parquet files of {root}"), said  # fmt: skip


def test_a_folder_with_another_pack_s_progress_is_refused(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / pack.STATE).write_text('{"args": {"format": "wds"}}')
    with pytest.raises(ValueError, match="unfinished pack of other arguments"):
        pack_dataset("folder", str(folder), "parquet", str(out), "x", 3)
    (out / pack.STATE).unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as e:
        pack_dataset("folder", str(folder), "wds", str(out), "x", 3)
    assert str(e.value) == f"--out {out} is not an empty folder (pack writes a new data set)"
    assert files_of(out) == {"notes.txt": b"mine"}


def test_a_split_whose_files_stop_opening_once_loaded_is_one_line(tmp_path):
    """Loading checks that a split has a readable image; files changed after it still leave
    pack with nothing to write: one line, no shard."""
    root = tmp_path / "folder"
    write_photo_folder(root, ("a", "b"), 2, ("train",), size=(48, 40))
    data = pack._sources("folder", str(root), 0)[0][1]
    for f in (root / "train").glob("*/*.jpg"):
        f.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        pack.pack_split(data, "wds", tmp_path, "x", "train", 3)
    assert str(e.value) == "no readable images in the train split to pack"
    assert not list(tmp_path.glob("*.tar"))


@pytest.mark.parametrize(
    "start, steps, shown",
    [
        # (seconds after the start, images read): what is logged
        (600, [(10, 900), (30, 1200)], ["train: 1200 of 7200 images (20 images/s, about 5 min left)"]),
        (600, [(29.9, 1200), (45, 1500), (60, 1800), (75, 2100)],
         ["train: 1500 of 7200 images (20 images/s, about 5 min left)",
          "train: 2100 of 7200 images (20 images/s, about 4 min left)"]),
        (0, [(30, 0)], ["train: 0 of 7200 images (0 images/s, about inf min left)"]),
    ],
)  # fmt: skip
def test_progress_is_logged_every_30_s_with_the_rate_since_the_start(monkeypatch, caplog, start,
                                                                     steps, shown):  # fmt: skip
    clock = [1000.0]
    monkeypatch.setattr(pack.time, "monotonic", lambda: clock[0])
    progress = pack._Progress("train", 7200, start)
    with caplog.at_level(logging.INFO, logger="resnext.data.pack"):
        for seconds, at in steps:
            clock[0] = 1000.0 + seconds
            progress.show(at)
    assert [r.getMessage() for r in caplog.records] == shown


def test_the_rate_of_a_first_second_is_not_rounded_to_a_second(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(pack.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(pack, "PROGRESS_SECONDS", 0.0)
    progress = pack._Progress("val", 100, 0)
    clock[0] = 1000.5
    with caplog.at_level(logging.INFO, logger="resnext.data.pack"):
        progress.show(10)
    assert caplog.records[0].getMessage() == "val: 10 of 100 images (20 images/s, about 0 min left)"


def test_progress_names_the_rate_and_the_time_left(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pack, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="resnext.data.pack"):
        pack_dataset("folder", str(folder), "wds", str(tmp_path / "out"), "x", 3)
    lines = [r.getMessage() for r in caplog.records if "images/s" in r.getMessage()]
    assert lines[0].startswith("train: 1 of 10 images (") and "min left)" in lines[0]
    assert lines[-1].startswith("validation: 10 of 10 images (")


@pytest.mark.parametrize(
    "kind, name, suffix",
    [
        ("jpeg", "a/b.JPEG", "jpg"),
        ("mpo", "a/b.jpg", "jpg"),  # a camera JPEG with extra frames is a JPEG
        ("mpo", "x.parquet:3", "jpg"),  # whatever its source's name
        ("jpeg", "x.tar:key", "jpg"),
        ("tiff", "a/b", "tif"),
        ("png", "", "png"),
        ("ico", "a/b.PNG", "png"),  # a kind without a suffix: the source's own, if an image's
        ("ico", "a/b.ico", None),
        ("", "a/b.webp", "webp"),
        ("", "a/b.txt", None),
    ],
)
def test_a_member_suffix_is_one_the_readers_take_as_an_image(kind, name, suffix):
    assert pack._suffix(kind, name) == suffix


def test_each_file_that_does_not_open_is_named_and_the_rest_packed(tmp_path, caplog):
    """pack reads each image's header: a file whose header does not read is a named bad image,
    and the images after it are packed (one that opens but does not decode, here a 1x1 PNG too
    small to crop, is the training reader's to name)."""
    from conftest import write_broken_images

    root = tmp_path / "folder"
    write_photo_folder(root, ("a", "b"), 3, ("train",), size=(48, 40))
    broken = write_broken_images(root / "train" / "a")
    with caplog.at_level(logging.INFO):
        info = pack.pack_split(
            pack._sources("folder", str(root), 0)[0][1], "wds", tmp_path, "x", "train", 100
        )
    assert info["num_samples"] == 6 + 1  # the photos of both classes and the 1x1 PNG
    assert "train: 7 images in 1 wds files\n" in caplog.text
    reasons = {"empty": "not an image file PIL can identify",
               "text": "not an image file PIL can identify", "truncated": "Truncated File Read"}  # fmt: skip
    for what, reason in reasons.items():
        assert f"skipping bad image {broken[what]}: {reason}\n" in caplog.text
    assert caplog.text.count("skipping bad image") == 3


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_packed_samples_name_their_source_file_and_label(folder, tmp_path, fmt):
    """Read back by webdataset and pyarrow (not our readers): each sample's label, and the file
    it came from as split/class/file; `_info.json` names the data set."""
    import json

    out = tmp_path / "out"
    pack_dataset("folder", str(folder), fmt, str(out), "photos", 3)
    want = sorted((p.relative_to(folder).as_posix(), "ab".index(p.parent.name))
                  for p in folder.glob("*/*/*.jpg"))  # fmt: skip
    if fmt == "wds":
        wds = pytest.importorskip("webdataset")
        tars = sorted(str(p) for p in out.glob("*.tar"))
        samples = list(wds.WebDataset(tars, shardshuffle=False))
        got = [(json.loads(s["json"])["filename"], json.loads(s["json"])["label"]) for s in samples]
        assert [int(s["cls"]) for s in samples] == [label for _, label in got]
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(sorted(out.glob("*/*.parquet")) or sorted(out.glob("*.parquet")))
        got = list(zip([i["path"] for i in table.column("image").to_pylist()],
                       table.column("label").to_pylist()))  # fmt: skip
        # statistics for the label only (min/max of image bytes would double the footer)
        for f in out.glob("data/*.parquet"):
            chunks = pq.ParquetFile(f).metadata.row_group(0)
            stats = {chunks.column(c).path_in_schema: chunks.column(c).is_stats_set
                     for c in range(chunks.num_columns)}  # fmt: skip
            assert stats == {"image.bytes": False, "image.path": False, "label": True}
    assert sorted(got) == want
    if fmt == "wds":
        info = json.loads((out / "_info.json").read_text())
        assert info["name"] == "photos" and info["classes"] == ["a", "b"]


def test_an_image_of_a_kind_without_a_suffix_keeps_its_files_or_is_named(tmp_path, caplog):
    """An ICO image (PIL opens it; the readers take no .ico): a file keeps its image suffix, a
    parquet row (named file:row, no suffix) is a named bad image."""
    from PIL import Image

    from test_input_rules import jpeg, write_parquet

    ico = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(ico, "ICO")
    folder = tmp_path / "folder"
    write_photo_folder(folder, ("a", "b"), 1, ("train",), size=(48, 40))
    (folder / "train" / "b" / "z.png").write_bytes(ico.getvalue())
    info = pack_dataset("folder", str(folder), "wds", str(tmp_path / "packed"), "x", 10)
    assert info["train"]["num_samples"] == 3
    with tarfile.open(tmp_path / "packed" / "x-train-0000.tar") as tar:
        assert sorted(n for n in tar.getnames() if n.endswith((".jpg", ".png"))) == [
            "00000000.jpg",
            "00000001.jpg",
            "00000002.png",
        ]
    root = tmp_path / "set"
    write_parquet(root / "data" / "train-00000-of-00001.parquet",
                  [jpeg(0), ico.getvalue(), jpeg(1)], [0, 1, 0], ["a", "b"])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="resnext.data.bad_images"):
        info = pack_dataset("parquet", str(root), "wds", str(tmp_path / "out"), "x", 10)
    assert info["train"]["num_samples"] == 2
    shard = root / "data" / "train-00000-of-00001.parquet"
    assert (
        f"skipping bad image {shard}:1: a ico image: no image suffix to store it\n" in caplog.text
    )
