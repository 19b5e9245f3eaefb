"""Image folders and symbolic links: each real file is read once however links reach it."""

from __future__ import annotations

import os
from pathlib import Path

from resnext.data.datasets import load_dataset

from conftest import digit_image


def _images(folder: Path, names: list[str], label: int = 0) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        digit_image(label, k).save(folder / n)
    return {os.path.realpath(folder / n) for n in names}


def test_every_link_shape_reads_each_real_file_once(tmp_path, caplog):
    root = tmp_path / "data"
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    real = _images(cat, ["0.jpg", "1.jpg"]) | _images(cat / "sub", ["2.jpg"])
    real |= _images(cat / "sub" / "deeper", ["3.jpg"])
    outside = _images(tmp_path / "elsewhere", ["4.jpg", "5.jpg"])
    dogs = _images(dog, ["0.jpg", "1.jpg"], label=1)
    (cat / "loop").symlink_to(".")  # ln -s . loop
    (cat / "up").symlink_to("..")  # the split folder: back up, a loop too
    (cat / "sub" / "back").symlink_to("..")  # a loop one level down
    (cat / "again").symlink_to("sub")  # a second way to a folder read anyway
    (cat / "sub" / "deeper" / "side").symlink_to("../../again")  # a link to that link
    (cat / "ext1").symlink_to(tmp_path / "elsewhere")  # a folder outside: read once
    (cat / "ext2").symlink_to(tmp_path / "elsewhere")
    (cat / "x.jpg").symlink_to("0.jpg")  # a link to a file
    (cat / "sub" / "y.jpg").symlink_to("../1.jpg")
    (root / "val" / "cat").mkdir(parents=True)
    (root / "val" / "dog").mkdir()
    with caplog.at_level("WARNING", logger="resnext"):
        data = load_dataset("folder", str(root), "train", in_memory="no")
    read = [os.path.realpath(p) for p in data.records.paths]
    assert len(read) == len(set(read))  # nothing twice
    assert set(read) == real | outside | dogs
    assert data.labels.tolist() == [0] * len(real | outside) + [1, 1]
    loops = [m for m in caplog.messages if "loop" in m]
    assert len(loops) == 4 and all(m.count("\n") == 0 for m in loops)
    for link in ("loop", "up", "sub/back", "sub/deeper/side"):  # each named once
        assert sum(f"{cat / link} leads" in m for m in loops) == 1


def test_without_links_the_order_is_imagefolders(tmp_path):
    """torchvision's ImageFolder order: sorted walk of the class folder, files sorted."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "data"
    for c, label in (("a", 0), ("b", 1)):
        _images(root / "train" / c, ["z.jpg", "b.jpg"], label)
        _images(root / "train" / c / "m", ["a.jpg"], label)
        _images(root / "train" / c / "m-x", ["c.jpg"], label)
    data = load_dataset("folder", str(root), "train", in_memory="no")
    ref = ImageFolder(str(root / "train"))
    assert [str(p) for p in data.records.paths] == [p for p, _ in ref.samples]
    assert data.labels.tolist() == [y for _, y in ref.samples]


def test_links_between_class_folders_do_not_move_or_repeat_images(tmp_path, caplog):
    """A link in one class folder to another class folder, or to its files, leaves those
    images to the class that holds them; a class folder linked to the split is no class."""
    root = tmp_path / "data"
    train = root / "train"
    cats = _images(train / "cat", ["0.jpg", "1.jpg"])
    dogs = _images(train / "dog", ["0.jpg"], label=1)
    (train / "cat" / "dogs").symlink_to("../dog")
    (train / "cat" / "d.jpg").symlink_to("../dog/0.jpg")
    (train / "every").symlink_to(".")  # a "class" that is the split folder itself
    (root / "val" / "cat").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="resnext"):
        data = load_dataset("folder", str(root), "train", in_memory="no")
    assert data.classes == ["cat", "dog"]
    pairs = [(os.path.realpath(p), y) for p, y in zip(data.records.paths, data.labels.tolist())]
    assert sorted(pairs) == sorted([(c, 0) for c in cats] + [(d, 1) for d in dogs])
    assert any("loop" in m and str(train / "every") in m for m in caplog.messages)
