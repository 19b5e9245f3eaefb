"""Parquet files not in `resnext pack`'s layout (data/parquet.py): a warning with the command
that packs them, at every load; an abort inside pyarrow while the index is built is one line."""

from __future__ import annotations

import shlex

import pytest

from resnext.cli import build_parser, main
from resnext.data.datasets import load_dataset
from test_input_rules import jpeg, write_parquet

from conftest import needs_child

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


def _foreign(root, split="train", n=6):
    """A parquet file as the hub's: all rows in one row group (pyarrow's default)."""
    images = [jpeg(i) for i in range(n)]
    return write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", images,
                         [i % 2 for i in range(n)])  # fmt: skip


def test_foreign_parquet_is_warned_about_at_every_load_with_the_pack_command(tmp_path, caplog):
    root = tmp_path / "hub set"
    _foreign(root)
    for _ in range(2):  # the index's build, then the index read back
        caplog.clear()
        load_dataset("parquet", str(root), "train", in_memory="no")
        warned = [r.getMessage() for r in caplog.records if "row group per image" in r.message]
        assert len(warned) == 1 and "1 of the 1 train parquet files" in warned[0]
        command = shlex.split(warned[0].split(": ")[-1])
        assert command[:2] == ["resnext", "pack"] and command[command.index("--data") + 1] == str(
            root
        )
        args = build_parser().parse_args(command[1:])
        assert (args.dataset, args.format) == ("parquet", "parquet")
    out = tmp_path / "packed"
    caplog.clear()
    assert main([*command[1:-1], str(out)]) == 0  # the command it names makes the fast layout
    assert "row group per image" not in caplog.text  # no advice to run what is running
    caplog.clear()
    load_dataset("parquet", str(out), "train", in_memory="no")
    assert "row group per image" not in caplog.text


@needs_child
def test_a_reader_that_aborts_on_a_footer_is_one_line_naming_the_file(tmp_path, capsys):
    """pyarrow aborts the process on some crafted footers: the index is built in a child, whose
    death names the file it was reading; the files before it were read."""
    import os

    from resnext.data import parquet

    root = tmp_path / "set"
    for k in range(3):
        write_parquet(root / "data" / f"train-0000{k}-of-00003.parquet", [jpeg(k)], [k % 2])
    crafted = root / "data" / "train-00001-of-00003.parquet"
    read = parquet.read_footer
    seen = tmp_path / "seen"

    def aborts(path):
        with open(seen, "a") as f:
            f.write(f"{path.name}\n")
        if path == crafted:
            os.abort()
        return read(path)

    with pytest.MonkeyPatch.context() as m:  # the patch reaches the forked child
        m.setattr(parquet, "read_footer", aborts)
        with pytest.raises(ValueError) as e:
            load_dataset("parquet", str(root), "train", in_memory="no")
        assert str(e.value) == (f"cannot read parquet file {crafted}: its reader died by "
                                "SIGABRT (a damaged file: replace it)")  # fmt: skip
        assert seen.read_text().split() == ["train-00000-of-00003.parquet", crafted.name]
        assert main(["train", "--dataset", "parquet", "--data", str(root), "--out",
                     str(tmp_path / "run")]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(crafted) in err and "SIGABRT" in err
    # The normal road: the index built in the child, then read here, give the same set.
    built = load_dataset("parquet", str(root), "train", in_memory="no")
    again = load_dataset("parquet", str(root), "train", in_memory="no")
    assert built.labels.tolist() == again.labels.tolist() == [0, 1, 0]


def _table(path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_parquet_files_of_other_columns_are_one_line_naming_the_file(tmp_path):
    image = pa.StructArray.from_arrays([pa.array([jpeg(0)]), pa.array(["x.jpg"])],
                                       names=["bytes", "path"])  # fmt: skip
    kinds = {"img": {"img": image, "label": pa.array([0])},
             "image as plain bytes": {"image": pa.array([jpeg(0)]), "label": pa.array([0])},
             "image without bytes": {"image": pa.StructArray.from_arrays(
                 [pa.array(["x.jpg"])], names=["path"]), "label": pa.array([0])},
             "no label": {"image": image}}  # fmt: skip
    for kind, columns in kinds.items():
        path = tmp_path / kind / "data" / "train-00000-of-00001.parquet"
        _table(path, columns)
        with pytest.raises(ValueError) as e:
            load_dataset("parquet", str(path.parents[1]), "train", in_memory="no")
        assert str(e.value) == (f"cannot read parquet file {path}: expected columns image "
                                f"{{bytes, path}} and label, found {list(columns)}"), kind  # fmt: skip


@pytest.mark.parametrize("labels, why", [([0, None, None, 1], "no label"),
                                         ([0, -1, -1, 1], "label -1 (unlabelled)")])  # fmt: skip
def test_rows_without_a_label_are_warned_about_once_per_file(tmp_path, caplog, labels, why):
    path = write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet",
                         [jpeg(i) for i in range(4)], labels, ["a", "b"])  # fmt: skip
    with caplog.at_level("WARNING", logger="resnext.data"):
        data = load_dataset("parquet", str(tmp_path), "train", in_memory="no")
    assert len(data) == 2 and data.bad.files == {f"{path}:1", f"{path}:2"}
    said = [m for m in caplog.messages if "without a label" in m]  # (and the advice to pack)
    assert said == [f"skipping 2 rows without a label in {path} (row 1: {why})"]


def test_where_no_parquet_files_are_found_the_message_says_what_was_looked_for(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset("parquet", str(tmp_path / "gone"), "train")
    assert (
        str(e.value)
        == f"no parquet data in '{tmp_path / 'gone'}' ({tmp_path / 'gone'} does not exist)"
    )
    with pytest.raises(ValueError) as e:
        load_dataset("parquet", str(tmp_path), "train")
    assert str(e.value) == (f"no train parquet files in {tmp_path} "
                            "(expected train-NNNNN-of-NNNNN.parquet)")  # fmt: skip
    write_parquet(tmp_path / "train-00001-of-00003.parquet", [jpeg(0)], [0], ["a"])
    write_parquet(tmp_path / "train-extra.parquet", [jpeg(1)], [0], ["a"])  # names not all counted
    assert len(load_dataset("parquet", str(tmp_path), "train", in_memory="no")) == 2


@pytest.mark.parametrize(
    "metadata, names",
    [
        (None, None),
        ({}, None),
        ({b"huggingface": b"{not json"}, None),
        ({b"huggingface": b'{"info": {"features": {"label": [1, 2]}}}'}, None),
        ({b"huggingface": b'{"info": {"features": {"label": {"_type": "Value"}}}}'}, None),
        ({b"huggingface": b'{"info": {"features": {"label": {"_type": "ClassLabel", "names": []}}}}'}, None),
        ({b"huggingface": b'{"info": {"features": {"label": {"_type": "ClassLabel", "names": ["a", "b"]}}}}'},
         ["a", "b"]),
    ],
)  # fmt: skip
def test_class_names_are_those_of_a_classlabel_feature_only(metadata, names):
    from resnext.data.parquet import label_names

    assert label_names(metadata) == names
