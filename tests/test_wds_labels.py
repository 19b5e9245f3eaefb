"""Labels of WebDataset samples (data/wds_labels.py): a `.cls` member, or a field of a `.json`
member, as timm's reader_wds takes them; timm's own `_decode` is the reference."""

from __future__ import annotations

import json
import logging

import pytest

from resnext.data.datasets import load_dataset
from test_input_rules import jpeg, records, write_info, write_tar


def _timm_samples(path, field: str) -> list[tuple[bytes, int]]:
    """(image, label) of the samples timm's reader decodes with the label in `.json` `field`,
    where that field holds an integer (timm also takes "2", 1.5 and true as labels: we refuse
    them, as a .cls that is no integer)."""
    wt = pytest.importorskip("webdataset.tariterators")
    reader = pytest.importorskip("timm.data.readers.reader_wds")
    with open(path, "rb") as f:
        files = [dict(m, __url__=str(path)) for m in wt.tar_file_iterator(f)]
    out = []
    for sample in wt.group_by_keys(files):
        try:
            decoded = reader._decode(dict(sample), alt_label=field)
        except Exception:  # noqa: BLE001 - timm's error on a sample it cannot label
            continue
        value = reader.get_field(json.loads(sample["json"]), field)
        if decoded is not None and type(value) is int:
            out.append((sample["jpg"], decoded["target"]))
    return out


def _members(metas: list[object], cls: list[bytes | None] | None = None) -> list:
    members = []
    for i, meta in enumerate(metas):
        members.append((f"{i:03d}.jpg", jpeg(i)))
        if cls and cls[i] is not None:
            members.append((f"{i:03d}.cls", cls[i]))
        if meta is not None:
            members.append((f"{i:03d}.json", json.dumps(meta).encode()))
    return members


def test_shards_with_labels_only_in_json_read_its_label_field(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    metas = [{"label": 1, "id": "a"}, {"label": 0}, {"label": "2"}, {"name": "x"}, None,
             {"label": 2}, {"label": -1}, {"label": 1.5}, {"label": True}]  # fmt: skip
    shard = write_tar(tmp_path / "x-train-0000.tar", _members(metas))
    for _ in range(2):  # the scan, then the index: both read the same and say where from
        caplog.clear()
        data = load_dataset("wds", str(tmp_path), "train", in_memory="no")
        assert records(data) == _timm_samples(shard, "label")
        assert data.labels.tolist() == [1, 0, 2]
        named = sorted(f.rsplit(":", 1)[1] for f in data.bad.files)
        assert named == ["002", "003", "004", "006", "007", "008"]
        assert "labels from the 'label' field of .json members (3)" in caplog.text
        assert "'label' is a str \"2\", not an integer" in caplog.text


def test_a_field_named_in_info_is_the_label_over_cls(tmp_path, caplog):
    """timm reads the split's `alt_label` field of `.json`, even where a `.cls` is present."""
    caplog.set_level(logging.INFO)
    metas = [{"meta": {"fine": 3}}, {"meta": {"fine": 0}}, {"fine": 1}, {"meta/fine": 2}]
    cls = [b"0", None, b"1", b"1"]
    shard = write_tar(tmp_path / "x-train-0000.tar", _members(metas, cls))
    write_info(tmp_path, {"train": ["x-train-0000.tar"]})
    info = json.loads((tmp_path / "_info.json").read_text())
    info["splits"]["train"]["alt_label"] = "meta/fine"
    (tmp_path / "_info.json").write_text(json.dumps(info))
    data = load_dataset("wds", str(tmp_path), "train", in_memory="no",
                        num_classes=4)  # fmt: skip
    assert records(data) == _timm_samples(shard, "meta/fine")
    assert data.labels.tolist() == [3, 0, 2]
    assert [f.rsplit(":", 1)[1] for f in data.bad.files] == ["002"]
    assert "labels from the 'meta/fine' field of .json members (3)" in caplog.text


def test_cls_is_read_first_and_json_where_there_is_none(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    metas = [{"label": 2}, {"label": 2}, None]
    write_tar(tmp_path / "x-train-0000.tar", _members(metas, [b"1", None, b"0"]))
    data = load_dataset("wds", str(tmp_path), "train", in_memory="no")
    assert data.labels.tolist() == [1, 2, 0]
    assert "labels from .cls members (2) and the 'label' field of .json members (1)" in caplog.text


def test_an_alt_label_that_is_no_field_name_is_one_line_naming_the_file(tmp_path):
    write_tar(tmp_path / "x-train-0000.tar", _members([{"label": 0}]))
    write_info(tmp_path, {"train": ["x-train-0000.tar"]})
    info = json.loads((tmp_path / "_info.json").read_text())
    info["splits"]["train"]["alt_label"] = ["label"]
    (tmp_path / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="_info.json: splits.train.alt_label is a list"):
        load_dataset("wds", str(tmp_path), "train", in_memory="no")
