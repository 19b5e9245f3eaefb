"""WebDataset shards and parquet files: `resnext pack` writes them, the readers read them back.

References independent of our code: the standard library's tarfile for the shards, timm's
`_parse_split_info` for `_info.json`, pyarrow for the parquet files, and Hugging Face `datasets`
for the ClassLabel metadata (it writes a foreign file too). Training from a folder, its shards
and its parquet files gives equal weights.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from resnext.cli import main
from resnext.data.datasets import load_dataset
from resnext.extras import MissingExtra
from resnext.files.model_file import read_model_file

from conftest import shared_scope, write_photo_folder

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

CLASSES = ["cat", "dog", "ship"]


@pytest.fixture(scope=shared_scope)
def packed(tmp_path_factory) -> dict[str, Path]:
    """A folder of 160x120 photos (3 classes; train 5, val 2 per class) and both packings."""
    root = tmp_path_factory.mktemp("packed")
    folder = write_photo_folder(root / "folder", CLASSES, 5, ("train",))
    write_photo_folder(folder, CLASSES, 2, ("val",))
    for fmt in ("wds", "parquet"):
        args = ["pack", "--data", str(folder), "--format", fmt, "--out", str(root / fmt)]
        assert main([*args, "--shard-size", "4", "--name", "photos"]) == 0
    return {"folder": folder, "wds": root / "wds", "parquet": root / "parquet"}


def _folder_records(folder: Path, split: str) -> list[tuple[bytes, int]]:
    """ImageFolder's order: sorted classes, sorted files."""
    return [(p.read_bytes(), label) for label, c in enumerate(CLASSES)
            for p in sorted((folder / split / c).iterdir())]  # fmt: skip


def _tar_records(paths: list[Path]) -> list[tuple[bytes, int]]:
    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        keys = sorted({name.split(".")[0] for name in members})
        assert list(members) == [f"{k}.{e}" for k in keys for e in ("jpg", "cls", "json")]
        out += [(members[f"{k}.jpg"], int(members[f"{k}.cls"])) for k in keys]
    return out


def test_wds_holds_the_folder_as_timm_reads_it(packed):
    from timm.data.readers.reader_wds import _parse_split_info

    info = json.loads((packed["wds"] / "_info.json").read_text())
    assert info["classes"] == CLASSES
    for split, source in (("train", "train"), ("validation", "val")):
        timm_split = _parse_split_info(split, info)
        shards = [packed["wds"] / f for f in timm_split.filenames]
        assert [s.name for s in shards][0] == f"photos-{split}-0000.tar"
        records = _tar_records(shards)
        assert records == _folder_records(packed["folder"], source)
        assert timm_split.num_samples == len(records) == sum(timm_split.shard_lengths)
        assert list(timm_split.shard_lengths) == [len(_tar_records([s])) for s in shards]


def test_parquet_holds_the_folder_as_datasets_reads_it(packed, tmp_path):
    datasets = pytest.importorskip("datasets")
    for split, source in (("train", "train"), ("validation", "val")):
        files = sorted((packed["parquet"] / "data").glob(f"{split}-*.parquet"))
        assert files[0].name == f"{split}-00000-of-{len(files):05d}.parquet"
        table = pq.read_table(files)  # pyarrow alone
        got = [(row["image"]["bytes"], row["label"]) for row in table.to_pylist()]
        assert got == _folder_records(packed["folder"], source)
        assert table.column("image").type.names == ["bytes", "path"]
        features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
        assert features["label"].names == CLASSES
        assert isinstance(features["image"], datasets.Image)
        assert pq.ParquetFile(files[0]).metadata.row_group(0).num_rows == 1
        hf = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                   cache_dir=str(tmp_path / "hf"))  # fmt: skip
        assert hf.features["label"].names == CLASSES
        assert hf["label"] == [y for _, y in got]


@pytest.mark.parametrize("name", ["wds", "parquet"])
def test_readers_give_the_folders_records(packed, name):
    folder = load_dataset("folder", str(packed["folder"]), "train", in_memory="no")
    data = load_dataset(name, str(packed[name]), "train", in_memory="no")
    assert data.classes == folder.classes and torch.equal(data.labels, folder.labels)
    order = np.random.default_rng(0).permutation(len(data))  # a shuffled epoch
    for i in order:
        source, where = data.open(int(i))
        assert source.read() == folder.records.paths[i].read_bytes()
        assert where.startswith(str(packed[name]))
    held = load_dataset(name, str(packed[name]), "auto", in_memory="no")
    assert held.split == "validation" and len(held) == 6
    part = data.subset(4)  # class-balanced, as for folders
    assert sorted(part.labels.tolist()) == [0, 0, 1, 2]
    same = folder.subset(4)
    assert [part.open(i)[0].read() for i in range(4)] == [
        p.read_bytes() for p in same.records.paths
    ]


@pytest.mark.parametrize("name", ["wds", "parquet"])
def test_readers_in_forked_workers_open_their_own_files(packed, name):
    """The parent reads first (its handles open), then two forked DataLoader workers read."""
    data = load_dataset(name, str(packed[name]), "train", in_memory="no")
    assert data.open(0)[0].read()
    loader = torch.utils.data.DataLoader(
        range(len(data)),
        batch_size=5,
        num_workers=2,
        collate_fn=lambda b: [data.open(i)[0].read() for i in b],
        multiprocessing_context="fork",
    )
    got = [raw for batch in loader for raw in batch]
    assert got == [data.open(i)[0].read() for i in range(len(data))]


def test_foreign_parquet_written_by_datasets_with_large_row_groups(packed, tmp_path):
    """A file as the `datasets` library writes it (here 5 rows per row group): classes from
    its ClassLabel feature, rows read right in any order (a row group is cached per process)."""
    datasets = pytest.importorskip("datasets")
    records = _folder_records(packed["folder"], "train")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    rows = {"image": [{"bytes": b, "path": f"{i}.jpg"} for i, (b, _) in enumerate(records)],
            "label": [y for _, y in records]}  # fmt: skip
    (tmp_path / "data").mkdir()
    for split in ("train", "validation"):
        ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"), batch_size=5)
    assert pq.ParquetFile(tmp_path / "data" / "train-00000-of-00001.parquet").num_row_groups == 3
    data = load_dataset("parquet", str(tmp_path), "train", in_memory="no")
    assert data.classes == ["a", "b", "c"]
    for i in [*np.random.default_rng(1).permutation(len(records)), *range(len(records))]:
        assert data.open(int(i))[0].read() == records[i][0]
    assert data.records.chunks == [None]  # read through pyarrow
    again = tmp_path / "again"  # packed again: one row per group, read straight from its pages
    assert main(["pack", "--dataset", "parquet", "--data", str(tmp_path), "--format", "parquet",
                 "--out", str(again)]) == 0  # fmt: skip
    repacked = load_dataset("parquet", str(again), "train", in_memory="no")
    assert repacked.classes == ["a", "b", "c"] and repacked.records.chunks[0] is not None
    assert [repacked.open(i)[0].read() for i in range(len(records))] == [b for b, _ in records]


def _train(name: str, data: Path, out: Path, *extra: str) -> dict:
    args = ["train", "--recipe", "tiny", "--dataset", name, "--data", str(data), "--out", str(out),
            "--epochs", "1", "--batch-size", "6", "--deterministic", "--seed", "3",
            "--set", "augment=inception", "--set", "pad=0", "--set", "train_size=32",
            "--set", "eval_resize=36", "--set", "eval_crop=32", "--set", "mean=0.5,0.5,0.5",
            "--set", "std=0.25,0.25,0.25", "--set", "model=resnext11_2x8d", *extra]  # fmt: skip
    assert main(args) == 0
    return read_model_file(out / "last.pt")


def test_folder_wds_and_parquet_train_equal_weights(packed, tmp_path, capsys):
    runs = {name: _train(name, path, tmp_path / name) for name, path in packed.items()}
    capsys.readouterr()
    ref = runs["folder"]
    assert ref["class_names"] == CLASSES
    for name in ("wds", "parquet"):
        assert runs[name]["class_names"] == CLASSES
        assert runs[name]["metrics"]["val_top1_error"] == ref["metrics"]["val_top1_error"]
        assert all(torch.equal(ref["model"][k], runs[name]["model"][k]) for k in ref["model"])
    args = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "folder" / "last.pt"),
        "--json",
        "--workers",
        "0",
    ]
    assert main([*args, "--dataset", "wds", "--data", str(packed["wds"]), "--split", "val"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert (score["split"], score["images"]) == ("validation", 6)
    assert score["top1_error"] == pytest.approx(ref["metrics"]["val_top1_error"])


def test_resume_from_shards_equals_an_uninterrupted_run(packed, tmp_path, monkeypatch):
    """Stopped inside epoch 2 and resumed: the same weights as a run never stopped."""
    import resnext.training.engine as engine
    from resnext.training.config import resolve_config
    from resnext.training.train import train

    cfg = resolve_config("tiny", {
        "dataset": "wds", "data": str(packed["wds"]), "epochs": 2, "batch_size": 6, "seed": 3,
        "deterministic": True, "augment": "inception", "pad": 0, "train_size": 32,
        "eval_resize": 36, "eval_crop": 32, "mean": (0.5,) * 3, "std": (0.25,) * 3,
        "model": "resnext11_2x8d", "checkpoint_steps": 1,
    })  # fmt: skip
    train(cfg, tmp_path / "straight")
    real, calls = engine.train_step, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # 2 steps per epoch: inside epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed")
    assert read_model_file(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(engine, "train_step", real)
    train(cfg, tmp_path / "resumed", resume="auto")
    a, b = (read_model_file(tmp_path / r / "last.pt") for r in ("straight", "resumed"))
    assert (a["epoch"], b["epoch"]) == (2, 2)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


def test_bad_samples_are_skipped_named_and_counted(packed, tmp_path, caplog):
    """A truncated JPEG, a text file named .jpg, a sample without .cls (wds) or without a label
    (parquet): each skipped with one warning naming the shard and the key, and counted."""
    good = _folder_records(packed["folder"], "train")
    wds = tmp_path / "wds"
    wds.mkdir()
    for split in ("train", "validation"):
        with tarfile.open(wds / f"x-{split}-0000.tar", "w") as tar:
            for k, (raw, y) in enumerate(good):
                _add(tar, f"s{k:03d}.jpg", raw)
                _add(tar, f"s{k:03d}.cls", str(y).encode())
            _add(tar, "trunc.jpg", good[0][0][: len(good[0][0]) // 3])
            _add(tar, "trunc.cls", b"0")
            _add(tar, "text.jpg", b"not an image\n")
            _add(tar, "text.cls", b"1")
            _add(tar, "nolabel.jpg", good[1][0])
    table = pq.read_table(sorted((packed["parquet"] / "data").glob("train-*")))
    rows = table.to_pylist()
    rows += [{"image": {"bytes": good[0][0][:500], "path": "t.jpg"}, "label": 0},
             {"image": {"bytes": good[1][0], "path": "n.jpg"}, "label": None}]  # fmt: skip
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        fixed = pa.Table.from_pylist(rows, schema=table.schema)
        pq.write_table(fixed, tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet")
    bad = {
        "wds": {f"{wds}/x-{s}-0000.tar:{k}" for s in ("train", "validation")
                for k in ("trunc", "text", "nolabel")},
        "parquet": {f"{tmp_path}/pq/data/{s}-00000-of-00001.parquet:{r}"
                    for s in ("train", "validation") for r in (15, 16)},
    }  # fmt: skip
    # One batch of every sample (17 in the shards, 16 rows with a label), so that all are read.
    for name, path, batch in (("wds", wds, "17"), ("parquet", tmp_path / "pq", "16")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="resnext"):
            run = _train(name, path, tmp_path / f"run-{name}", "--batch-size", batch,
                         "--set", "max_bad_fraction=0.2")  # fmt: skip
        warned = [m for m in caplog.messages if m.startswith("skipping bad image")]
        assert {m.split(" ")[3].rstrip(":") for m in warned} == bad[name]
        assert len(warned) == len(bad[name])  # one warning each
        assert not [m for m in warned if "object at 0x" in m]  # named, not an address
        assert run["metrics"]["bad_images"] == len(bad[name])


@pytest.mark.parametrize("name", ["wds", "parquet"])
def test_a_missing_or_truncated_shard_is_one_line_before_training(packed, tmp_path, capsys, name):
    import shutil

    for damage in ("missing", "truncated"):
        data = tmp_path / f"{name}-{damage}"
        shutil.copytree(packed[name], data)
        files = sorted(data.rglob("*-train-*.tar" if name == "wds" else "train-*.parquet"))
        victim = files[1]
        if damage == "missing":
            victim.unlink()
        else:
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        capsys.readouterr()
        out = tmp_path / f"run-{name}-{damage}"
        args = ["train", "--recipe", "tiny", "--dataset", name, "--data", str(data)]
        assert main([*args, "--out", str(out), "--set", "mean=0.5,0.5,0.5",
                     "--set", "std=0.2,0.2,0.2"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(victim) in err, err
        assert not (out / "last.pt").exists()


def test_without_info_a_gap_in_the_numbering_names_the_missing_shard(packed, tmp_path):
    import shutil

    data = tmp_path / "wds"
    shutil.copytree(packed["wds"], data)
    (data / "_info.json").unlink()
    assert len(load_dataset("wds", str(data), "train")) == 15  # found by their names
    (data / "photos-train-0001.tar").unlink()
    with pytest.raises(ValueError, match=f"shard {data / 'photos-train-0001.tar'} is missing"):
        load_dataset("wds", str(data), "train")


@pytest.mark.parametrize(
    "names, missing",
    [
        (["s-train-0000.tar", "s-train-0002.tar"], "s-train-0001.tar"),
        (["s-train-0001.tar", "s-train-0002.tar"], "s-train-0000.tar"),
        (["s-train-0001.tar"], "s-train-0000.tar"),
        (["s-train-00.tar", "s-train-01.tar", "s-train-03.tar"], "s-train-02.tar"),
        (["s-train-0000.tar", "s-train-0001.tar"], None),
        (["a-train-0000.tar", "b-train-0002.tar"], None),  # two numberings: neither is checked
        (["s-train-0000.tar", "s-train-last.tar", "s-train-0002.tar"], None),  # not all numbered
    ],
)
def test_without_info_one_numbering_with_a_gap_names_the_first_missing_shard(
    tmp_path, names, missing
):
    from resnext.data import wds

    shards = [tmp_path / n for n in names]
    if missing is None:
        wds._check_numbering(shards)
        return
    with pytest.raises(ValueError) as e:
        wds._check_numbering(shards)
    assert str(e.value) == f"shard {tmp_path / missing} is missing (the numbering skips it)"


@pytest.mark.parametrize(
    "value, shown",
    [
        ([1, 2], "a list [1, 2]"),
        ("x" * 38, f'a str "{"x" * 38}"'),  # 40 characters with its quotes: shown whole
        ("x" * 39, f'a str "{"x" * 39}...'),
        ({"k": None}, 'a dict {"k": null}'),
    ],
)
def test_an_info_value_in_a_message_is_its_type_and_its_first_40_characters(value, shown):
    from resnext.data import wds

    assert wds._shown(value) == shown


@pytest.mark.parametrize(
    "info, names, found",
    [
        ({}, ["x-train-0000.tar"], ["train"]),
        ({}, ["x-train-0000.tar", "x-test-0000.tar", "x-validation-0000.tar"],
         ["train", "validation", "test"]),
        ({"splits": {"test": {"filenames": []}}}, ["a.tar"], ["train", "test"]),
        ({"splits": {"validation": {"filenames": []}}}, [], ["train", "validation"]),
    ],
)  # fmt: skip
def test_the_held_out_splits_are_those_named_in_info_or_in_shard_names(tmp_path, info, names,
                                                                        found):  # fmt: skip
    from resnext.data import wds

    for n in names:
        (tmp_path / n).write_bytes(b"")
    if info:
        (tmp_path / "_info.json").write_text(json.dumps(info))
    assert wds.splits(str(tmp_path)) == found


def test_a_shard_cut_inside_an_image_after_its_scan_names_the_sample(tmp_path):
    from resnext.data import wds
    from resnext.data.bad_images import BadImages

    shard = tmp_path / "x-train-0000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("a", "b"):
            for ext, payload in (("jpg", bytes(range(200))), ("cls", b"0")):
                member = tarfile.TarInfo(f"{key}.{ext}")
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
    records = wds.load(str(tmp_path), "train", BadImages()).records
    assert records.read(1) == bytes(range(200))
    records = wds.load(str(tmp_path), "train", BadImages()).records  # from its index
    with open(shard, "r+b") as f:
        f.truncate(3 * 512 + 512 + 100)  # a's image and label, then b's header and 100 bytes
    with pytest.raises(OSError) as e:
        records.read(1)
    assert str(e.value) == f"{shard}:b: shard ends inside the image (truncated)"


def _shard(path: Path, samples: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for k in range(samples):
            for ext, payload in (("jpg", b"\xff\xd8" + bytes(50)), ("cls", b"1")):
                member = tarfile.TarInfo(f"{k:03d}.{ext}")
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("claimed", [1, 3])
def test_a_shard_of_another_count_than_info_says_is_one_line(tmp_path, claimed):
    shard = _shard(tmp_path / "x-train-0000.tar", 2)
    info = {"splits": {"train": {"filenames": [shard.name], "shard_lengths": [claimed]}}}
    (tmp_path / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError) as e:
        load_dataset("wds", str(tmp_path), "train", in_memory="no")
    assert str(e.value) == (f"shard {shard} holds 2 samples where _info.json says {claimed} "
                            "(truncated or replaced: download or pack it again)")  # fmt: skip


def test_shards_that_hold_no_sample_are_one_line(tmp_path, capsys):
    _shard(tmp_path / "x-train-0000.tar", 0)
    _shard(tmp_path / "x-validation-0000.tar", 1)
    assert main(["train", "--recipe", "tiny", "--dataset", "wds", "--data", str(tmp_path),
                 "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err == f"resnext: error: no readable samples in the train shards of {tmp_path}\n"


def test_where_no_shards_are_found_the_message_says_what_was_looked_for(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset("wds", str(tmp_path), "train")
    assert str(e.value) == f"no train shards in {tmp_path} (expected NAME-train-NNNN.tar)"
    (tmp_path / "_info.json").write_text(json.dumps({"splits": {"train": {"filenames": []}}}))
    with pytest.raises(ValueError) as e:
        load_dataset("wds", str(tmp_path), "train")
    assert str(e.value) == f"{tmp_path / '_info.json'} lists no train shards"
    (tmp_path / "_info.json").unlink()
    (tmp_path / "x-train-0000.tar").mkdir()  # a shard that is no file
    with pytest.raises(ValueError) as e:
        load_dataset("wds", str(tmp_path), "train")
    assert str(e.value).startswith(f"cannot read shard {tmp_path / 'x-train-0000.tar'}: ")


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no WebDataset shards in '{root}' ({root} does not exist)"),
        ("{not json", "cannot read {info}: Expecting property name enclosed in double quotes: "
                      "line 1 column 2 (char 1)"),
        ("[1, 2]", "{info} is not a dataset info file (expected {{'splits': {{...}}}})"),
        ('{"splits": [1]}', "{info} is not a dataset info file (expected {{'splits': {{...}}}})"),
    ],
)  # fmt: skip
def test_an_info_file_that_is_not_one_is_one_line_naming_it(tmp_path, text, message):
    from resnext.data import wds

    root = tmp_path / "set"
    if text is not None:
        root.mkdir()
        (root / "_info.json").write_text(text)
    with pytest.raises(ValueError) as e:
        wds.read_info(str(root))
    assert str(e.value) == message.format(root=root, info=root / "_info.json")


@pytest.mark.parametrize("extra, label", [(0, 1), (1, None)])
def test_a_json_label_up_to_its_size_limit_is_read(tmp_path, extra, label):
    from resnext.data import wds
    from resnext.data.wds_labels import MAX_JSON

    pad = MAX_JSON + extra - len(json.dumps({"label": 1, "pad": ""}))
    meta = json.dumps({"label": 1, "pad": " " * pad}).encode()  # MAX_JSON + extra bytes
    path = tmp_path / "x-train-0000.tar"
    with tarfile.open(path, "w") as tar:
        for name, payload in (("a.jpg", b"\xff\xd8"), ("a.json", meta)):
            member = tarfile.TarInfo(name)
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    (sample,) = wds.scan_tar(path)
    got, reason = wds.sample_label(sample.label, sample.meta, None)
    assert len(meta) == MAX_JSON + extra and got == label, reason


def test_a_truncated_tar_without_info_is_caught(packed, tmp_path):
    """Cut at a member boundary, a tar still parses: the missing end-of-archive blocks say so."""
    data = tmp_path / "wds"
    data.mkdir()
    shard = sorted(packed["wds"].glob("*-train-*.tar"))[0]
    with tarfile.open(shard) as tar:
        cut = [m for m in tar][-1].offset  # the start of the last member's header
    (data / shard.name).write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(ValueError, match=f"shard {data / shard.name} is truncated"):
        load_dataset("wds", str(data), "train")


def test_pack_refuses_a_used_folder_and_names_missing_pyarrow(packed, capsys, monkeypatch):
    args = ["pack", "--data", str(packed["folder"]), "--format", "wds"]
    assert main([*args, "--out", str(packed["parquet"])]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    missing = packed["folder"] / "missing"
    assert main(["pack", "--data", str(missing), "--format", "wds", "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing' (it does not exist)" in err
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtra, match=r"pip install 'resnext\[imagenet\]'"):
        load_dataset("parquet", str(packed["parquet"]), "train")


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_headers_are_read_as_tarfile_reads_them(tmp_path, fmt):
    """Long paths (ustar prefix, GNU long names, pax records), non-ASCII names, empty members."""
    from resnext.data.wds import scan_tar

    path = tmp_path / "x.tar"
    deep = "a" * 80 + "/" + ("b" * 90 + "/") * (1 if fmt == tarfile.USTAR_FORMAT else 3)
    keys = [f"{deep}{k}é" if k % 2 == 0 else f"s{k}" for k in range(4)]  # short names too
    with tarfile.open(path, "w", format=fmt) as tar:
        for k in range(4):
            # Members that are no file, with names long enough for their own GNU/pax records:
            # their names must not pass to the next file.
            for kind in (tarfile.DIRTYPE, tarfile.SYMTYPE):
                other = tarfile.TarInfo(
                    ("d" * 120 if fmt != tarfile.USTAR_FORMAT else "d") + str(k)
                )
                other.type, other.linkname = kind, "x"
                tar.addfile(other)
            _add(tar, f"{keys[k]}.jpg", bytes([k]) * (300 * k))
            _add(tar, f"{keys[k]}.cls", str(k).encode())
    with tarfile.open(path) as tar:
        ref = {m.name: (m.offset_data, m.size) for m in tar}
    got = scan_tar(path)
    assert [s.name for s in got] == keys
    assert [s.image for s in got] == [ref[f"{key}.jpg"] for key in keys]
    assert [s.label for s in got] == [str(k).encode() for k in range(4)]


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_small_images_in_shards_are_held_in_memory_as_a_folders_are(tmp_path, fmt):
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "small", per_class=3)  # 32-px JPEGs
    assert main(["pack", "--data", str(folder), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    ref = load_dataset("folder", str(folder), "train")
    data = load_dataset(fmt, str(tmp_path / fmt), "train")
    assert ref.images is not None and data.images is not None and data.records is None
    assert torch.equal(data.images, ref.images) and torch.equal(data.labels, ref.labels)


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_rows_are_read_straight_from_their_pages_as_pyarrow_reads_them(tmp_path, version):
    """One row per row group, uncompressed: each row is one positioned read of its page (no
    pyarrow call), for data pages v1 and v2, with null images and null bytes among them."""
    from resnext.data.parquet import ParquetRecords, hf_metadata

    rng = np.random.default_rng(0)
    images = [{"bytes": rng.bytes(int(n)), "path": f"{k}.jpg"}
              for k, n in enumerate(rng.integers(0, 5000, 12))]  # fmt: skip
    images[3], images[7] = None, {"bytes": None, "path": "gone.jpg"}
    # The first image readable: a split of none is refused.
    write_photo_folder(tmp_path / "f", ["a"], 1, ("train",))
    images[0]["bytes"] = (tmp_path / "f" / "train" / "a" / "0.jpg").read_bytes()
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()),
                                                            ("path", pa.string())])),
                      "label": pa.array([0] * 12, pa.int64())})  # fmt: skip
    (tmp_path / "data").mkdir()
    for split in ("train", "validation"):
        pq.write_table(table.replace_schema_metadata(hf_metadata(["x"])),
                       tmp_path / "data" / f"{split}-00000-of-00001.parquet", row_group_size=1,
                       compression="none", use_dictionary=False, data_page_version=version)  # fmt: skip
    data = load_dataset("parquet", str(tmp_path), "train", in_memory="no")
    assert data.records.chunks[0] is not None and data.records.max_def == [2]

    def no_pyarrow(*args):
        raise AssertionError("read through pyarrow")

    data.records._by_pyarrow = no_pyarrow
    for i, image in enumerate(images):
        if image is None or image["bytes"] is None:
            with pytest.raises(OSError, match="no image bytes"):
                data.records.read(i)
        else:
            assert data.records.read(i) == image["bytes"]
    assert isinstance(data.records, ParquetRecords)


def test_bad_images_error_stops_at_the_first_bad_sample(packed, tmp_path):
    from resnext.data.datasets import BadImageError

    (tmp_path / "wds").mkdir()
    raw = _folder_records(packed["folder"], "train")[0][0]
    with tarfile.open(tmp_path / "wds" / "x-train-0000.tar", "w") as tar:
        _add(tar, "a.jpg", raw)
        _add(tar, "a.cls", b"0")
        _add(tar, "b.jpg", raw)  # no .cls
    with pytest.raises(BadImageError, match=r"x-train-0000.tar:b: no \.cls label"):
        load_dataset("wds", str(tmp_path / "wds"), "train", bad_images="error")
    assert len(load_dataset("wds", str(tmp_path / "wds"), "train", in_memory="no")) == 1


def test_pack_keeps_camera_jpegs_that_open_as_mpo(tmp_path):
    """Phone JPEGs carry an MPF segment and open as "MPO": packed, they stay readable images."""
    from PIL import Image

    from resnext.data.pack import pack_dataset

    for split in ("train", "val"):
        for k, c in enumerate(CLASSES):
            folder = tmp_path / "src" / split / c
            folder.mkdir(parents=True)
            im = Image.new("RGB", (40, 30), (10 + k, 20, 30))
            im.save(folder / "p.jpg", "MPO", save_all=True, append_images=[im])
            im.save(folder / "q.jpg", "JPEG")
    assert Image.open(tmp_path / "src/train/cat/p.jpg").format == "MPO"
    pack_dataset("folder", str(tmp_path / "src"), "wds", str(tmp_path / "wds"))
    with tarfile.open(tmp_path / "wds" / "src-train-0000.tar") as tar:
        suffixes = sorted(m.name.rsplit(".", 1)[1] for m in tar if not m.name.endswith("json"))
    assert suffixes == ["cls"] * 6 + ["jpg"] * 6
    assert _tar_records(sorted((tmp_path / "wds").glob("*-train-*.tar"))) == _folder_records(
        tmp_path / "src", "train"
    )


def test_pack_leaves_out_an_unlabelled_held_out_split(tmp_path, caplog):
    """ILSVRC/imagenet-1k's test rows have label -1: packing the set packs train and
    validation, and says once per file why test is left out."""
    from resnext.data.pack import pack_dataset
    from resnext.data.parquet import hf_metadata

    data = tmp_path / "hf" / "data"
    data.mkdir(parents=True)
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (40, 40), (1, 2, 3)).save(jpeg, "JPEG")
    for split, labels in (("train", [0, 1, 0, 1]), ("validation", [0, 1]), ("test", [-1] * 50)):
        images = pa.StructArray.from_arrays(
            [pa.array([jpeg.getvalue()] * len(labels)), pa.array(["x.jpg"] * len(labels))],
            names=["bytes", "path"],
        )
        table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
        pq.write_table(
            table.replace_schema_metadata(hf_metadata(["a", "b"])),
            data / f"{split}-00000-of-00001.parquet",
        )
    splits = pack_dataset("parquet", str(tmp_path / "hf"), "parquet", str(tmp_path / "out"))
    assert sorted(splits) == ["train", "validation"]
    assert [sum(v["shard_lengths"]) for v in splits.values()] == [4, 2]
    said = [r.getMessage() for r in caplog.records if "test" in r.getMessage()]
    assert len(said) == 2, said  # the unlabelled rows once, the split left out once
    assert "50 rows without a label" in said[0]
    test = load_dataset("parquet", str(tmp_path / "out"), "train")
    assert test.labels.tolist() == [0, 1, 0, 1]


def test_numbered_classes_a_small_validation_split_lacks_are_no_disagreement(tmp_path):
    """Shards without class names (timm's own _info.json) are named by their labels, split by
    split: a validation split without the last class still validates the training run, and
    evaluates its checkpoint; named classes that differ are still refused."""
    from PIL import Image

    from resnext.data.samples import common_classes

    def jpeg(k: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (40, 40), (60 * k, 90, 200 - 50 * k)).save(out, "JPEG")
        return out.getvalue()

    splits = {"train": [0, 1, 2] * 4, "validation": [0, 1] * 3}
    info = {"name": "x", "splits": {}}
    for split, labels in splits.items():
        with tarfile.open(tmp_path / f"x-{split}-0000.tar", "w") as tar:
            for i, y in enumerate(labels):
                _add(tar, f"{i:05d}.jpg", jpeg(y))
                _add(tar, f"{i:05d}.cls", str(y).encode())
        info["splits"][split] = {"name": split, "num_samples": len(labels),
                                 "filenames": [f"x-{split}-0000.tar"],
                                 "shard_lengths": [len(labels)]}  # fmt: skip
    (tmp_path / "_info.json").write_text(json.dumps(info))
    run = _train("wds", tmp_path, tmp_path / "run")
    assert run["class_names"] == ["0", "1", "2"]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset",
                 "wds", "--data", str(tmp_path), "--workers", "0"]) == 0  # fmt: skip
    assert common_classes(["0", "1", "2"], ["0", "1"]) == ["0", "1", "2"]
    assert common_classes(["0", "1"], ["0", "1", "2"]) is None  # labels the model lacks
    assert common_classes(["cat", "dog", "ship"], ["cat", "dog"]) is None
    assert common_classes(["0", "1", "2"], ["1", "2"]) is None


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_a_label_past_the_named_classes_is_a_bad_sample(tmp_path, fmt, caplog):
    """With recorded class names, a label beyond them is skipped, named and counted."""
    from PIL import Image

    from resnext.data.parquet import hf_metadata

    jpeg = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 99, 199)).save(jpeg, "JPEG")
    labels = [0, 1, 5, 1]
    if fmt == "wds":
        with tarfile.open(tmp_path / "x-train-0000.tar", "w") as tar:
            for i, y in enumerate(labels):
                _add(tar, f"{i:05d}.jpg", jpeg.getvalue())
                _add(tar, f"{i:05d}.cls", str(y).encode())
        split = {"name": "train", "num_samples": 4, "filenames": ["x-train-0000.tar"],
                 "shard_lengths": [4]}  # fmt: skip
        info = {"name": "x", "classes": ["a", "b"], "splits": {"train": split}}
        (tmp_path / "_info.json").write_text(json.dumps(info))
        bad = f"{tmp_path / 'x-train-0000.tar'}:00002"
    else:
        images = pa.StructArray.from_arrays(
            [pa.array([jpeg.getvalue()] * 4), pa.array(["x.jpg"] * 4)], names=["bytes", "path"]
        )
        table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
        path = tmp_path / "train-00000-of-00001.parquet"
        pq.write_table(table.replace_schema_metadata(hf_metadata(["a", "b"])), path)
        bad = f"{path}:2"
    data = load_dataset(fmt, str(tmp_path), "train")
    assert data.classes == ["a", "b"] and data.labels.tolist() == [0, 1, 1]
    assert data.bad.files == {bad}
    assert f"{bad}: label 5 has no class (2 names)" in caplog.text
