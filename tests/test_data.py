"""Datasets read into the same in-memory form; batches do not depend on the world size."""

import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnext.cli import main
from resnext.data.batches import eval_batches, eval_indices, train_indices
from resnext.data.datasets import BadImageError, ImageSet, held_out_split, load_dataset
from resnext.data.preprocessing import Preprocessing
from resnext.data.records import FileRecords
from resnext.data.transforms import crop_flip, draw_crop_flip, eval_image, eval_views, mix

from conftest import digit_image, write_image_folder


def write_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    """The official python format (data_batch_1..5, test_batch, batches.meta), tiny."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = (
            test
            if name == "test_batch"
            else rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        )
        batch = {"batch_label": name, "data": data, "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return test


def test_cifar10_python_format(tmp_path):
    test = write_cifar10(tmp_path)
    train = load_dataset("cifar10", str(tmp_path), "train")
    val = load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"), "test")
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert val.classes[3] == "cat" and val.labels.tolist() == [0, 1, 2, 3]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert val.images[1, 1, 2, 5] == test[1, 1024 + 2 * 32 + 5]


def test_cifar100_python_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        data = {"data": np.zeros((3, 3072), np.uint8), "fine_labels": [5, 7, 99]}
        (folder / name).write_bytes(pickle.dumps(data))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    val = load_dataset("cifar100", str(tmp_path), "auto")
    assert len(val.classes) == 100 and val.labels.tolist() == [5, 7, 99]


def test_missing_cifar_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no cifar10 data"):
        load_dataset("cifar10", str(tmp_path), "train")


def test_digits_split():
    train, val = load_dataset("digits", "", "train"), load_dataset("digits", "", "test")
    assert (len(train), len(val)) == (1437, 360)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.max() == 255


def make_folder(root: Path, per_class: int = 2, classes: tuple = ("cat", "dog", "ship")) -> Path:
    """A few real pictures (32 px colour digits) in an ImageNet-style tree under tmp."""
    return write_image_folder(root, classes, per_class)


def test_folder_small_images_are_decoded_into_memory(tmp_path):
    make_folder(tmp_path)
    val = load_dataset("folder", str(tmp_path), "val")
    assert val.classes == ["cat", "dog", "ship"] and val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert val.images.shape == (6, 3, 32, 32) and val.images.dtype == torch.uint8
    files = load_dataset("folder", str(tmp_path), "val", in_memory="no")
    assert files.images is None and len(files.records.paths) == 6
    with pytest.raises(ValueError, match="no val or test folder"):
        load_dataset("folder", str(tmp_path / "train"), "val")


def test_global_batches_are_split_between_ranks():
    single = train_indices(50, 8, seed=3, epoch=1)
    halves = [train_indices(50, 8, seed=3, epoch=1, rank=r, world=2) for r in (0, 1)]
    assert len(single) == 6  # the last partial batch is dropped
    for s, (a, b) in enumerate(zip(*halves)):
        assert torch.equal(torch.cat([a, b]), single[s])
    assert not torch.equal(train_indices(50, 8, 3, 2)[0], single[0])
    shares = torch.cat([torch.cat(eval_indices(11, 4, r, 3)) for r in range(3)])
    assert sorted(shares.tolist()) == list(range(11))


def test_crop_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    zero, no = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool)
    two = torch.full((2,), 2)
    assert torch.equal(crop_flip(x, 2, two, two, no), x)
    assert torch.equal(crop_flip(x, 2, two, two, ~no), x.flip(-1))
    shifted = crop_flip(x, 2, zero, two, no)  # two rows of padding on top
    assert torch.equal(shifted[:, :, 2:], x[:, :, :2]) and shifted[:, :, :2].abs().sum() == 0
    oy, ox, flip = draw_crop_flip(100, 4, True, torch.Generator().manual_seed(0))
    assert oy.max() <= 8 and ox.min() >= 0 and 20 < flip.sum() < 80


def test_eval_views_match_per_image_and_batch():
    x = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8)
    assert eval_views(x, 40, 32, False).shape == (2, 3, 32, 32)
    ten = eval_views(x, 40, 32, True)
    assert ten.shape == (2, 10, 3, 32, 32)
    assert torch.equal(ten[0], eval_image(x[0], 40, 32, True))
    assert torch.equal(ten[:, 9], ten[:, 4].flip(-1))  # the mirrored centre crop


def _mixed(x: torch.Tensor, num: int, mixup: float, cutmix: float, seed: int):
    """`mix` of 8 distinct images labelled 0..7: each target row names its two sources."""
    y = torch.arange(len(x))
    xm, t = mix(x, y, num, mixup, cutmix, torch.Generator().manual_seed(seed))
    assert xm.shape == x.shape and t.shape == (len(x), num)
    assert torch.allclose(t.sum(1), torch.ones(len(x))) and (t >= 0).all()
    lam = t[torch.arange(len(x)), y]  # the weight left on each image's own label
    other = t.clone()
    other[torch.arange(len(x)), y] = 0
    partner = torch.where(lam < 1, other.argmax(1), y)  # the image mixed into each one
    return xm, lam, partner


def test_mixup_is_a_convex_blend_with_one_permutation_and_one_lambda():
    """Every mixed image is lam * itself + (1 - lam) * its partner, the label weights the same
    lam, the partners are a permutation, and lam is one draw for the whole batch."""
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    blended = 0
    for seed in range(5):
        xm, lam, partner = _mixed(x, 8, 0.4, 0.0, seed)
        assert sorted(partner.tolist()) == list(range(8))
        moved = partner != torch.arange(8)
        assert torch.allclose(lam[moved], lam[moved][0].expand(int(moved.sum())))
        want = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
        assert torch.allclose(xm, want, atol=1e-5)
        blended += int(moved.any() and 0.01 < lam[moved][0] < 0.99)
    assert blended >= 3  # really mixed, not the one-hot labels passed through


def test_cutmix_pastes_one_box_whose_area_is_the_label_weight():
    """Each image keeps its pixels outside one box (the same box for the batch) and takes its
    partner's inside; the partner's label weight is the box's share of the area."""
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pasted = 0
    for seed in range(5):
        xm, lam, partner = _mixed(x, 8, 0.0, 1.0, seed)
        box = (xm != x).any(1)  # pixels that changed (random values: no ties)
        for i in range(8):
            if partner[i] == i:
                assert not box[i].any()
                continue
            assert torch.equal(box[i], box[0] if partner[0] != 0 else box[i])
            rows, cols = box[i].any(1).nonzero(), box[i].any(0).nonzero()
            if len(rows):  # a filled rectangle
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                assert box[i, r0:r1, c0:c1].all() and box[i].sum() == (r1 - r0) * (c1 - c0)
            inside = box[i].expand(3, -1, -1)
            assert torch.equal(xm[i][inside], x[partner[i]][inside])
            assert torch.equal(xm[i][~inside], x[i][~inside])
            assert float(lam[i]) == pytest.approx(1 - float(box[i].float().mean()), abs=1e-6)
        pasted += int(box.any())
    assert pasted >= 3


def test_mix_draws_lambda_from_beta_and_picks_cutmix_half_the_time():
    """Over 300 batches: mixup's lam follows Beta(alpha, alpha) (Zhang et al.; scipy's
    Kolmogorov-Smirnov test), and with both on, each batch takes one of them at even odds."""
    from scipy import stats

    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    lams, cut = [], 0
    for seed in range(300):
        xm, lam, partner = _mixed(x, 8, 0.4, 0.0, seed)
        moved = partner != torch.arange(8)
        if moved.any():
            lams.append(float(lam[moved][0]))
        xm, lam, partner = _mixed(x, 8, 0.4, 1.0, 1000 + seed)
        # Mixup changes every pixel of an image it mixes; CutMix only a box (maybe empty).
        moved = partner != torch.arange(8)
        cut += int(not (xm[moved] != x[moved]).flatten(1).all(1).any())
    assert len(lams) > 250
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert stats.kstest(lams, stats.uniform().cdf).pvalue < 0.01  # the test can tell
    assert 0.4 < cut / 300 < 0.6


def add_broken_files(root: Path) -> dict[str, Path]:
    """Real broken files next to the good ones, and valid images in other colour modes."""
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    good = (cat / "0.jpg").read_bytes()
    bad = {
        "truncated": cat / "t.jpg",
        "zero_byte": cat / "z.jpg",
        "not_an_image": dog / "notes.jpg",
        "other_suffix": dog / "labels.txt",
    }
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["zero_byte"].write_bytes(b"")
    bad["not_an_image"].write_text("not a JPEG\n")
    bad["other_suffix"].write_text("cat dog\n")
    image = Image.open(cat / "0.jpg")
    image.convert("CMYK").save(dog / "cmyk.jpg")
    image.convert("L").save(dog / "grey.png")
    image.convert("RGBA").save(dog / "rgba.png")
    return bad


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, caplog):
    bad = add_broken_files(make_folder(tmp_path))
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        train = load_dataset("folder", str(tmp_path), "train")
    assert len(train) == 6 + 3 and train.images.shape[1:] == (3, 32, 32)  # modes converted
    # dog: 0.jpg, 1.jpg, cmyk.jpg, grey.png, rgba.png at 2..6; rgba.png is cat/0.jpg, opaque.
    grey, rgba = train.images[5], train.images[6]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert torch.equal(rgba, train.images[0])
    assert train.bad.files == {str(p) for p in bad.values()}
    assert sorted(r.getMessage().split(":")[0] for r in caplog.records) == sorted(
        f"skipping bad image {p}" for p in bad.values()
    )
    # Large-image sets read files per batch: the same files are skipped, each warned once.
    caplog.clear()
    files = load_dataset("folder", str(tmp_path), "train", in_memory="no")
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        for _ in range(2):
            pre = Preprocessing(32, 32, "bilinear", [0.5] * 3, [0.2] * 3)
            n = sum(len(y) for _, y in eval_batches(files, 4, pre))
            assert n == 9
    assert files.bad.files == {str(p) for p in bad.values()} and len(caplog.records) == len(bad)
    # Listing meets the non-image suffix before any decoding.
    with pytest.raises(BadImageError, match=f"bad image {bad['other_suffix']}: not an image"):
        load_dataset("folder", str(tmp_path), "train", bad_images="error")


def test_bad_images_count_in_metrics_and_error_mode_names_the_file(tmp_path, capsys):
    bad = add_broken_files(make_folder(tmp_path / "data"))
    args = ["train", "--recipe", "tiny", "--dataset", "folder", "--data", str(tmp_path / "data"),
            "--epochs", "1", "--batch-size", "4", "--set", "train_size=32",
            "--set", "eval_resize=32", "--set", "eval_crop=32", "--set", "mean=0.5,0.5,0.5",
            "--set", "std=0.25,0.25,0.25", "--set", "model=resnext11_2x8d",
            "--set", "max_bad_fraction=1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["bad_images"] == len(bad)
    capsys.readouterr()
    bad.pop("other_suffix").unlink()  # then the truncated JPEG is the first bad file
    assert main([*args, "--out", str(tmp_path / "strict"), "--bad-images", "error"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnext: error: bad image ") and str(bad["truncated"]) in err
    assert err.count("\n") == 1 and not (tmp_path / "strict").exists()


def test_empty_class_and_empty_folder_fail_before_training(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "zebra").mkdir()
    with pytest.raises(ValueError, match="class folder .*train/zebra holds no readable images"):
        load_dataset("folder", str(tmp_path), "train")
    for c in ("cat", "dog", "ship"):
        shutil.rmtree(tmp_path / "val" / c)
    (tmp_path / "val" / "cat").mkdir()
    with pytest.raises(ValueError, match="no readable images in .*val/<class>/"):
        load_dataset("folder", str(tmp_path), "val")
    shutil.rmtree(tmp_path / "val" / "cat")
    digit_image(0, 0).save(tmp_path / "val" / "0.jpg")
    with pytest.raises(ValueError, match="no class folders in .*val"):
        load_dataset("folder", str(tmp_path), "val")


def test_limits_spread_over_the_classes():
    digits = load_dataset("digits", "", "train")
    part = digits.subset(50)
    assert torch.bincount(part.labels).tolist() == [5] * 10
    assert torch.equal(part.labels, digits.subset(50).labels)  # deterministic
    assert not torch.equal(part.images, digits.subset(50, seed=1).images)
    # Sorted class folders: the first N files would all be airplanes.
    labels = torch.arange(3000) // 300
    data = ImageSet(
        [str(i) for i in range(10)],
        labels,
        records=FileRecords([Path(f"{i}") for i in range(3000)]),
    )
    part = data.subset(25)
    assert torch.bincount(part.labels).tolist() == [3] * 5 + [2] * 5
    assert all(int(str(p)) // 300 == y for p, y in zip(part.records.paths, part.labels.tolist()))


def test_images_in_subfolders_of_a_class_are_read_in_imagefolder_order(tmp_path):
    """As torchvision's ImageFolder: recursive, sorted by folder then file name."""
    make_folder(tmp_path, per_class=1)
    nested = tmp_path / "train" / "cat" / "b" / "deeper"
    nested.mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a").mkdir()
    digit_image(0, 5).save(tmp_path / "train" / "cat" / "a" / "z.jpg")
    digit_image(0, 6).save(nested / "y.png")
    (tmp_path / "train" / "cat" / ".hidden").mkdir()
    digit_image(0, 7).save(tmp_path / "train" / "cat" / ".hidden" / "x.png")
    files = load_dataset("folder", str(tmp_path), "train", in_memory="no")
    cat = tmp_path / "train" / "cat"
    assert files.records.paths[:3] == [cat / "0.jpg", cat / "a" / "z.jpg", nested / "y.png"]
    assert files.labels.tolist() == [0, 0, 0, 1, 2] and not files.bad.files
    memory = load_dataset("folder", str(tmp_path), "train")
    assert memory.images.shape == (5, 3, 32, 32)


def test_the_held_out_split_is_chosen_in_one_place(tmp_path):
    make_folder(tmp_path)  # train/ and val/
    assert held_out_split("folder", str(tmp_path)) == "val"
    with pytest.raises(ValueError, match="no test folder in .* \\(it holds val\\)"):
        held_out_split("folder", str(tmp_path), "test")
    shutil.copytree(tmp_path / "val", tmp_path / "test")
    assert load_dataset("folder", str(tmp_path), "auto").split == "val"
    assert load_dataset("folder", str(tmp_path), "test").split == "test"
    shutil.rmtree(tmp_path / "val")
    assert load_dataset("folder", str(tmp_path), "auto").split == "test"
    assert load_dataset("digits", "", "auto").split == "test"
    with pytest.raises(ValueError, match="digits has no val split; its held-out split is test"):
        load_dataset("digits", "", "val")


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (16, 4)])
def test_default_workers_never_exceed_the_usable_cpus(monkeypatch, cpus, expected):
    from resnext import cpus as module

    monkeypatch.setattr(module.os, "sched_getaffinity", lambda pid: set(range(cpus)),
                        raising=False)  # fmt: skip
    assert module.default_workers() == expected


def _killed(image):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does: no Python error


def test_a_worker_killed_outright_is_named_as_such():
    from resnext.data.batches import LoaderError, PerImage, loader
    from resnext.data.samples import ImageSet

    data = ImageSet(
        ["a"], torch.zeros(4, dtype=torch.long), torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    )
    with pytest.raises(
        LoaderError, match="worker failed: .*SIGKILL: most often the out-of-memory killer"
    ):
        list(loader(PerImage(data, _killed), [torch.arange(2), torch.arange(2, 4)], 1, False))


def test_mix_is_a_function_of_its_generator_alone():
    """Every draw (which of the two, lam, the permutation, the box) comes from the step's
    generator, never from the global generators: resume and data-parallel ranks rely on it."""
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.4, 1.0)):
        outs = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            np.random.seed(global_seed)
            outs.append(mix(x, y, 10, mixup, cutmix, torch.Generator().manual_seed(5)))
        (xa, ta), (xb, tb) = outs
        assert torch.equal(xa, xb) and torch.equal(ta, tb) and ta.shape == (8, 10)
        xc, _ = mix(x, y, 10, mixup, cutmix, torch.Generator().manual_seed(6))
        assert not torch.equal(xa, xc)
