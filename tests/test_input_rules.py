"""Every input means what it says: the rules every file format shares (datasets.load_files, the
bad-image policy) and the edges of each reader, checked on data written here, format by format.

References independent of our code: webdataset's own grouping of tar members into samples,
pyarrow for parquet, and Hugging Face `datasets` for the parquet files it writes itself.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from resnext.cli import main
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


def records(data, n: int | None = None) -> list[tuple[bytes, int]]:
    """(encoded image, label) of the first `n` samples (all) of a set read by record."""
    return [(data.open(i)[0].read(), int(data.labels[i])) for i in range(n or len(data))]


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
    "members without a key": [("README", b"x"), ("v.jpg", jpeg(16)), ("v.cls", b"1"),
                              ("notes/", b""), ("w.jpg", jpeg(17)), ("w.cls", b"0")],
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
    runs, last = {}, None  # the keys that come back after other members, in order
    for name, _ in _LAYOUTS[layout]:
        key = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
        if key and key.group(1) != last:
            last = key.group(1)
            runs[last] = runs.get(last, 0) + 1
    repeated = [k for k, n in runs.items() if n > 1]
    said = [m for m in caplog.messages if "come back" in m]
    assert said == ([f"{shard}: {len(repeated)} keys ({repeated[0]} first) come back after other "
                     "members: each run of members is a sample of its own (webdataset's rule), "
                     "named KEY#2, ..."] if repeated else [])  # fmt: skip


def write_set(root: Path, fmt: str, splits: dict[str, list[int]], classes=None,
              bad: dict[str, set[int]] | None = None, size: int = 40) -> Path:  # fmt: skip
    """A data set of distinct `size` px JPEGs with these labels per split ("train",
    "validation"), in `fmt`: a folder (class folders: `classes` or the labels' numbers), wds
    shards, or parquet files; shards and parquet record `classes` when given. The images at
    the indices `bad[split]` are text, not images."""
    k = 0
    for split, labels in splits.items():
        broken = (bad or {}).get(split, set())
        images = [b"not an image" if i in broken else jpeg(k + i, size) for i in range(len(labels))]
        k += len(labels)
        if fmt == "folder":
            for i, (image, y) in enumerate(zip(images, labels)):
                folder = root / ("val" if split == "validation" else split)
                (folder / (classes[y] if classes else str(y))).mkdir(parents=True, exist_ok=True)
                (folder / (classes[y] if classes else str(y)) / f"{i}.jpg").write_bytes(image)
        elif fmt == "wds":
            root.mkdir(parents=True, exist_ok=True)
            members = [(f"{i:04d}.{e}", v) for i, (image, y) in enumerate(zip(images, labels))
                       for e, v in (("jpg", image), ("cls", str(y).encode()))]  # fmt: skip
            write_tar(root / f"x-{split}-0000.tar", members)
        else:
            write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", images, labels,
                          classes)  # fmt: skip
    if fmt == "wds" and classes:
        write_info(root, {s: [f"x-{s}-0000.tar"] for s in splits}, classes=list(classes))
    return root


TRAIN = ["--recipe", "tiny", "--epochs", "1", "--batch-size", "4", "--set", "mean=0.5,0.5,0.5",
         "--set", "std=0.2,0.2,0.2", "--set", "model=resnext11_2x8d"]  # fmt: skip


def train(fmt: str, data: Path, out: Path, *extra: str) -> int:
    return main(["train", *TRAIN, "--dataset", fmt, "--data", str(data), "--out", str(out), *extra])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# 2. The class count comes from names or from num_classes; a gap in numbered labels is refused.


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_numbered_labels_with_gaps_need_the_class_count(tmp_path, fmt, capsys, caplog):
    from resnext.files.model_file import read_model_file

    labels = [0, 4, 6, 4, 0, 6, 4, 0, 40_000]
    data = write_set(tmp_path / fmt, fmt, {"train": labels, "validation": [0, 4, 6, 9]})
    assert train(fmt, data, tmp_path / "run") == 2
    err = one_line(capsys)
    for said in ("40000", "4 distinct", "num_classes=N", "--num-classes N",
                 "_info.json" if fmt == "wds" else "ClassLabel"):  # fmt: skip
        assert said in err, err
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "last.pt").exists()
    out = str(tmp_path / "packed")
    assert main(["pack", "--dataset", fmt, "--data", str(data), "--format", "wds",
                 "--out", out]) == 2  # fmt: skip
    assert "4 distinct" in one_line(capsys)
    # Given the count: a model of that many classes; labels at or past it are named bad samples.
    caplog.clear()
    given = ("--set", "num_classes=7", "--set", "max_bad_fraction=0.2")  # 1 of 9 is bad
    assert train(fmt, data, tmp_path / "run", *given) == 0
    run = read_model_file(tmp_path / "run" / "last.pt")
    assert run["class_names"] == [str(i) for i in range(7)]
    skipped = [m for m in caplog.messages if m.startswith("skipping bad image")]
    assert len(skipped) == 2 and all("has no class (7 names)" in m for m in skipped), skipped
    assert main(["pack", "--dataset", fmt, "--data", str(data), "--format", "parquet",
                 "--out", out, "--num-classes", "7"]) == 0  # fmt: skip
    packed = load_dataset("parquet", out, "train")
    assert packed.classes == [str(i) for i in range(7)] and len(packed) == len(labels) - 1
    # evaluate knows the model's classes: the held-out label 9 is a named bad sample.
    caplog.clear()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset", fmt,
                 "--data", str(data), "--workers", "0", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert "label 9 has no class (7 names)" in caplog.text


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_labels_without_gaps_and_names_keep_their_count(tmp_path, fmt, capsys):
    """0..max with every label used: max + 1 classes, as before; recorded names set the count,
    and a num_classes that contradicts them is one line."""
    data = write_set(tmp_path / "n", fmt, {"train": [2, 1, 0, 1, 2, 0, 0, 2], "validation": [1]})
    assert load_dataset(fmt, str(data), "train").classes == ["0", "1", "2"]
    names = ["ant", "bee", "cow", "doe"]
    data = write_set(tmp_path / "named", fmt, {"train": [3, 0, 3, 0, 3, 0, 0, 3],
                                               "validation": [0, 3]}, names)  # fmt: skip
    assert load_dataset(fmt, str(data), "train").classes == names
    assert train(fmt, data, tmp_path / "run", "--set", "num_classes=9") == 2
    assert "num_classes=9" in one_line(capsys)


# 3. A split without a readable image stops before training; so does an epoch of bad images.


@pytest.mark.parametrize("fmt", ["folder", "wds", "parquet"])
def test_a_split_of_unreadable_images_stops_before_training(tmp_path, fmt, capsys):
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    every = {"train": set(range(8)), "validation": {0, 1}}
    data = write_set(tmp_path / fmt, fmt, {"train": labels, "validation": [0, 1, 2]}, bad=every)
    for memory in ("auto", "no"):
        assert train(fmt, data, tmp_path / "run", "--set", f"in_memory={memory}") == 2
        err = one_line(capsys)
        assert "all 8 samples are bad" in err and "..." in err, err
        assert not (tmp_path / "run" / "last.pt").exists()
    out = tmp_path / "packed"
    assert main(["pack", "--dataset", fmt, "--data", str(data), "--format", "wds",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "all 8 samples are bad" in one_line(capsys)
    # The held-out split alone: evaluate stops too.
    good = write_set(tmp_path / "good", fmt, {"train": labels, "validation": [0, 1, 2]})
    assert train(fmt, good, tmp_path / "run") == 0
    every["validation"] = {0, 1, 2}
    data = write_set(tmp_path / "badval", fmt, {"train": labels, "validation": [0, 1, 2]},
                     bad=every)  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset", fmt,
                 "--data", str(data), "--workers", "0"]) == 2  # fmt: skip
    assert "all 3 samples are bad" in one_line(capsys)


@pytest.mark.parametrize("fmt", ["folder", "wds", "parquet"])
def test_an_epoch_of_too_many_bad_images_stops_with_the_last_checkpoint_kept(tmp_path, fmt,
                                                                              capsys):  # fmt: skip
    from resnext.files.model_file import read_model_file

    labels = [0, 1, 2] * 8  # 24 images, 3 of them bad (12.5%), the first one readable
    bad = {"train": {5, 13, 22}}
    data = write_set(tmp_path / fmt, fmt, {"train": labels, "validation": [0, 1, 2]}, bad=bad)
    run = tmp_path / "run"
    files = ("--set", "in_memory=no", "--batch-size", "8")
    assert train(fmt, data, run, *files, "--set", "max_bad_fraction=0.125") == 0
    assert read_model_file(run / "last.pt")["epoch"] == 1
    before = (run / "last.pt").read_bytes()
    resume = ("--epochs", "2", "--resume", str(run), "--set", "max_bad_fraction=0.05")
    assert train(fmt, data, run, *files, *resume) == 2
    err = one_line(capsys)
    assert "epoch 2: 3 of 24 training images were bad" in err, err
    assert "max_bad_fraction=0.05" in err and "last.pt" in err, err
    assert (run / "last.pt").read_bytes() == before  # the last checkpoint is kept as it was
    # Held in memory, bad images are met while loading: the same limit, before training.
    assert train(fmt, data, tmp_path / "memory", "--set", "in_memory=yes") == 2
    assert "the training split of" in one_line(capsys)
    assert not (tmp_path / "memory" / "last.pt").exists()


# 4. Parquet rows that hold a path and no bytes (as `datasets` writes them) read the path.


@pytest.mark.parametrize("where", ["absolute", "beside the parquet file", "working directory"])
def test_parquet_rows_with_a_path_and_no_bytes_read_the_file(tmp_path, where, monkeypatch,
                                                              caplog):  # fmt: skip
    datasets = pytest.importorskip("datasets")
    from resnext.files.model_file import read_model_file

    root = tmp_path / "hub"
    images = {"beside the parquet file": root / "data", "working directory": tmp_path}.get(
        where, tmp_path / "elsewhere"
    )
    monkeypatch.chdir(tmp_path)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["x", "y", "z"])})  # fmt: skip
    labels = {"train": [2, 0, 1, 1, 2, 0, 0, 1, 2, 1, 0, 2], "validation": [1, 0, 2]}
    for split, ys in labels.items():
        paths = []
        for i, y in enumerate(ys):
            path = images / "pics" / split / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(10 * y + i))
            paths.append(str(path if where == "absolute" else path.relative_to(images)))
        gone = images / "pics" / "gone.jpg"  # removed once written: a path that does not open
        gone.write_bytes(jpeg(0))
        paths.append(str(gone if where == "absolute" else gone.relative_to(images)))
        monkeypatch.chdir(images)  # where `datasets` finds the relative paths
        table = datasets.Dataset.from_dict({"image": paths, "label": [*ys, 0]}, features=features)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
        gone.unlink()
    monkeypatch.chdir(tmp_path)
    stored = pq.read_table(root / "data" / "train-00000-of-00001.parquet").column("image")
    assert all(row["bytes"] is None for row in stored.to_pylist())
    data = load_dataset("parquet", str(root), "train", in_memory="no")
    reference = datasets.Dataset.from_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    got = records(data, 12)
    assert [y for _, y in got] == reference["label"][:12] == labels["train"]
    assert [b for b, _ in got] == [
        (images / "pics" / "train" / f"{i}.jpg").read_bytes() for i in range(12)
    ]
    with pytest.raises(OSError, match=r"gone.jpg does not open \(No such file or directory\)$"):
        data.records.read(12)
    caplog.clear()
    out = tmp_path / "run"
    assert train("parquet", root, out, "--batch-size", "13", "--set", "in_memory=no",
                 "--set", "max_bad_fraction=0.1") == 0  # fmt: skip
    assert read_model_file(out / "last.pt")["metrics"]["bad_images"] == 2  # train's and val's
    assert "train-00000-of-00001.parquet:12: no image bytes in this row" in caplog.text


def test_a_parquet_row_with_neither_bytes_nor_path_is_a_named_bad_sample(tmp_path):
    root = tmp_path / "set"
    write_parquet(root / "data" / "train-00000-of-00001.parquet", [jpeg(0), None, jpeg(1)],
                  [0, 1, 1], ["a", "b"], paths=["a.jpg", None, "b.jpg"])  # fmt: skip
    data = load_dataset("parquet", str(root), "train", in_memory="no")
    assert data.records.read(2) == jpeg(1)
    with pytest.raises(OSError) as e:
        data.records.read(1)
    assert str(e.value) == "no image bytes in this row, and no path"


def test_parquet_files_without_a_data_folder_are_found_in_the_root(tmp_path):
    for split, labels in (("train", [0, 1, 0]), ("validation", [1])):
        write_parquet(tmp_path / f"{split}-00000-of-00001.parquet",
                      [jpeg(i) for i in range(len(labels))], labels, ["a", "b"])  # fmt: skip
    from resnext.data import parquet

    assert parquet.splits(str(tmp_path)) == ["train", "validation"]
    data = load_dataset("parquet", str(tmp_path), "val", in_memory="no")
    assert records(data) == [(jpeg(0), 1)]


# 5. Fewer training images than one batch: one line, whatever the schedule.


@pytest.mark.parametrize("fmt", ["folder", "wds", "parquet"])
def test_fewer_training_images_than_one_batch_is_one_line(tmp_path, fmt, capsys):
    labels = [1, 0, 2, 1, 0, 2, 1, 0, 2, 1]
    data = write_set(tmp_path / fmt, fmt, {"train": labels, "validation": [0, 1, 2]},
                     bad={"train": {2, 4, 9}})  # fmt: skip
    for schedule in ("step", "cosine"):
        args = ("--batch-size", "8", "--set", f"schedule={schedule}", "--set", "warmup_epochs=0.5",
                "--set", "max_bad_fraction=1")  # fmt: skip
        assert train(fmt, data, tmp_path / "run", *args) == 2
        err = one_line(capsys)
        assert "7 usable images (3 bad ones skipped)" in err and "one batch (8)" in err, err
        assert not (tmp_path / "run" / "last.pt").exists()


# 6. A label is an integer; anything else is one line naming the file, or a named bad sample.


def test_a_parquet_label_column_of_other_values_is_one_line(tmp_path, capsys):
    """Strings, fractions, NaN, booleans: refused by train, evaluate and pack alike."""
    good = write_set(tmp_path / "good", "parquet", {"train": [0, 1, 2] * 3, "validation": [2]})
    assert train("parquet", good, tmp_path / "run") == 0
    columns = {"string": (["0", "1", "2"], pa.string()), "float": ([0.6, 1.0, 2.0], pa.float64()),
               "nan": ([0.0, float("nan"), 1.0], pa.float32()), "bool": ([True, False, True], None)}  # fmt: skip
    for kind, (labels, column) in columns.items():
        root = tmp_path / kind
        for split in ("train", "validation"):
            write_parquet(root / "data" / f"{split}-00000-of-00001.parquet",
                          [jpeg(i) for i in range(3)] * 3, labels * 3, ["a", "b", "c"],
                          label_type=column)  # fmt: skip
        shown = {"string": "string", "float": "double", "nan": "float", "bool": "bool"}[kind]
        capsys.readouterr()
        commands = (
            ["train", *TRAIN, "--dataset", "parquet", "--data", str(root), "--out",
             str(tmp_path / f"run-{kind}")],
            ["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset",
             "parquet", "--data", str(root)],
            ["pack", "--dataset", "parquet", "--data", str(root), "--format", "wds", "--out",
             str(tmp_path / f"pack-{kind}")],
        )  # fmt: skip
        for argv in commands:
            assert main(argv) == 2, argv
            err = one_line(capsys)
            assert f"{root / 'data'}/" in err and f"label column holds {shown} values" in err, err


_INFO_MISTAKES = {
    "a split given as a list": ({"splits": {"train": ["x-train-0000.tar"]}}, "splits.train is a list"),
    "a shard length in words": ({"splits": {"train": {"filenames": ["x-train-0000.tar"],
                                                      "shard_lengths": ["nine"]}}},
                                "splits.train.shard_lengths is a list"),
    "filenames as one string": ({"splits": {"train": {"filenames": "x-train-0000.tar"}}},
                                "splits.train.filenames is a str"),
    "num_samples as text": ({"splits": {"train": {"filenames": ["x-train-0000.tar"],
                                                  "num_samples": "9"}}},
                            "splits.train.num_samples is a str"),
    "classes as a number": ({"classes": 3, "splits": {}}, "classes is a int"),
}  # fmt: skip


@pytest.mark.parametrize("mistake", list(_INFO_MISTAKES))
def test_an_info_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path, mistake, capsys):
    data = write_set(tmp_path / "wds", "wds", {"train": [0, 1, 2] * 3, "validation": [1]})
    info, said = _INFO_MISTAKES[mistake]
    (data / "_info.json").write_text(json.dumps(info))
    assert train("wds", data, tmp_path / "run") == 2
    err = one_line(capsys)
    assert f"{data / '_info.json'}: {said}" in err, err
    assert main(["pack", "--dataset", "wds", "--data", str(data), "--format", "wds",
                 "--out", str(tmp_path / "packed")]) == 2  # fmt: skip
    assert f"{data / '_info.json'}: {said}" in one_line(capsys)


def test_a_cls_that_is_no_integer_is_a_named_bad_sample(tmp_path, caplog):
    labels = [b"1", b"1.5", b"one", b"", b"\xff\xfe", b"2 cats", b"0", b"2", b"-1", b"9" * 40]
    members = [(f"{i:03d}.{e}", v) for i, y in enumerate(labels)
               for e, v in (("jpg", jpeg(i)), ("cls", y))]  # fmt: skip
    write_tar(tmp_path / "x-train-0000.tar", members)
    data = load_dataset("wds", str(tmp_path), "train", in_memory="no")
    assert data.labels.tolist() == [1, 0, 2]
    named = sorted(f.rsplit(":", 1)[1] for f in data.bad.files)
    assert named == ["001", "002", "003", "004", "005", "008", "009"]
    assert caplog.text.count("is not an integer") == 6 and "label -1 (unlabelled)" in caplog.text


# 8. What _info.json claims is checked against the shards: their own counts are used.


@pytest.mark.parametrize("claims", [{"num_samples": 100}, {"num_samples": 3},
                                    {"shard_lengths": [4, 5, 6]}, {"shard_lengths": [7]}])  # fmt: skip
def test_info_counts_that_disagree_with_the_shards_are_warned_about(tmp_path, claims, caplog):
    data = write_set(tmp_path / "wds", "wds", {"train": [0, 1, 2] * 3, "validation": [1, 2]})
    # The train split is in two shards of 5 and 4 samples.
    members = [(n.name, tarfile.open(data / "x-train-0000.tar").extractfile(n).read())
               for n in tarfile.open(data / "x-train-0000.tar")]  # fmt: skip
    write_tar(data / "x-train-0000.tar", members[:10])
    write_tar(data / "x-train-0001.tar", members[10:])
    write_info(data, {"train": ["x-train-0000.tar", "x-train-0001.tar"],
                      "validation": ["x-validation-0000.tar"]})  # fmt: skip
    info = json.loads((data / "_info.json").read_text())
    info["splits"]["train"] |= claims
    (data / "_info.json").write_text(json.dumps(info))
    with caplog.at_level("WARNING", logger="resnext"):
        assert len(load_dataset("wds", str(data), "train")) == 9
    said = [m for m in caplog.messages if "_info.json" in m]
    assert len(said) == 1, caplog.messages
    if "num_samples" in claims:
        assert said[0] == (f"{data / '_info.json'} says the train split holds "
                           f"{claims['num_samples']} samples; its shards hold 9 (used)")  # fmt: skip
    else:
        n = len(claims["shard_lengths"])
        assert said[0] == (f"{data / '_info.json'} lists {n} shard_lengths for the 2 train shards "
                           "it names (the shards' own counts are used)")  # fmt: skip


# 11. Training without a held-out split is asked for by name, and the refusal names it.


@pytest.mark.parametrize("fmt", ["folder", "wds", "parquet"])
def test_training_without_a_held_out_split_is_asked_for_by_val_split_none(tmp_path, fmt, capsys):
    from resnext.files.model_file import read_model_file

    data = write_set(tmp_path / fmt, fmt, {"train": [0, 1, 2, 1, 0, 2, 2, 1]})
    run = tmp_path / "run"
    assert train(fmt, data, run) == 2
    assert "--set val_split=none trains without one" in one_line(capsys)
    assert train(fmt, data, run, "--set", "val_split=none") == 0
    assert "trained without a held-out split (val_split=none)" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.jsonl").read_text())
    assert not [k for k in metrics if k.startswith("val")] and (run / "errors.png").is_file()
    assert (run / "last.pt").is_file() and not (run / "best.pt").exists()
    assert train(fmt, data, run, "--epochs", "2", "--resume", str(run)) == 0
    assert read_model_file(run / "last.pt")["epoch"] == 2
    assert main(["train", *TRAIN, "--dataset", fmt, "--data", str(data), "--out",
                 str(tmp_path / "test"), "--set", "val_split=test"]) == 2  # fmt: skip
    assert "val_split=none" in capsys.readouterr().err
