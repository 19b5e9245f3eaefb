"""A run learns, writes its directory, resumes exactly, and works from the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnext.training.engine
from resnext.cli import main
from resnext.data.transforms import normalize
from resnext.files.checkpoint import save_checkpoint
from resnext.files.loader import load_model
from resnext.files.model_file import read_model_file
from resnext.models.model import build_model
from resnext.models.zoo import ModelSpec
from resnext.training.config import resolve_config
from resnext.training.train import train

from conftest import write_image_folder

TIMING = ("images_per_second", "seconds")


def test_short_run_learns_and_fills_the_run_directory(tmp_path):
    result = train(resolve_config("tiny"), tmp_path / "run")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json", "metrics.jsonl", "last.pt", "best.pt", "errors.png"
    }  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    keys = {"epoch", "lr", "train_loss", "train_top1_error", "val_top1_error", "val_top5_error"}
    assert keys | set(TIMING) <= set(rows[0])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert result["val_top1_error"] < 50  # chance is 90% error on 10 classes
    ckpt = read_model_file(run / "last.pt")
    assert ckpt["class_names"] == [str(i) for i in range(10)] and ckpt["epoch"] == 3
    assert ckpt["preprocessing"] == {
        "resize": 8, "crop": 8, "mean": [0.305], "std": [0.376], "interpolation": "bilinear",
        "channels": 1,
    }  # fmt: skip
    assert ckpt["config"]["recipe"] == "tiny" and ckpt["spec"]["in_channels"] == 1
    assert load_model(run / "last.pt").fc.out_features == 10


def test_cli_train_evaluate_plot(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    args = ["train", "--recipe", "tiny", "--out", str(run), "--epochs", "1", "--seed", "1"]
    with caplog.at_level("INFO", logger="resnext"):
        assert main([*args, "--set", "train_limit=32", "--set", "val_limit=16"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f"run directory: {run}" in out and f"plot: {run / 'errors.png'}" in out
    assert (captured.out + captured.err).count("plot: ") == 1  # not logged again
    assert not [m for m in caplog.messages if m.startswith("plot: ")]
    assert (
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", "digits", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    top1, top5 = _hand_count_on_digits(load_model(run / "best.pt"))
    assert result["images"] == 360
    assert result["top1_error"] == pytest.approx(top1) and result["top5_error"] == pytest.approx(
        top5
    )
    (run / "errors.png").unlink()
    assert main(["plot", str(run)]) == 0
    assert (run / "errors.png").stat().st_size > 0
    # Resuming a finished run with more epochs continues it.
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def _hand_count_on_digits(model) -> tuple[float, float]:
    """Top-1 and top-5 error (%) on the digits test split, counted here: scikit-learn's images
    scaled to 0..255, the documented split (the first 360 of a permutation seeded 0), the
    recipe's mean and std applied in numpy, ranks from numpy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(0))[:360]
    pixels = np.rint(digits.images[order.numpy()] * (255 / 16)).astype(np.uint8)
    x = (pixels.astype(np.float32) / 255 - 0.305) / 0.376
    with torch.no_grad():
        logits = model(torch.from_numpy(x[:, None])).numpy()
    ranked = np.argsort(-logits, axis=1)
    truth = digits.target[order.numpy()]
    top1 = 100 * np.mean(ranked[:, 0] != truth)
    top5 = 100 * np.mean(~(ranked[:, :5] == truth[:, None]).any(1))
    return float(top1), float(top5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "lrr=1"], "unknown config key 'lrr'"),
        (["--set", "epochs=x"], "epochs expects int"),
        (["--epochs", "x"], "invalid int value"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--set", "precision=fp8"], "precision must be one of"),
    ],
)
def test_cli_bad_overrides_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnext: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _folder(root: Path) -> Path:
    return write_image_folder(root, per_class=3, splits=("val",))


def _checkpoint(path: Path, spec: ModelSpec, crop: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(spec).eval()
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.25, 0.25]
    save_checkpoint(path, {
        "model": model.state_dict(), "spec": spec.to_dict(), "model_name": None,
        "class_names": ["cat", "dog", "ship"],
        "preprocessing": {"resize": crop, "crop": crop, "mean": mean, "std": std,
                          "interpolation": "bilinear"},
    })  # fmt: skip
    return model


def test_evaluate_agrees_with_a_hand_count(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    spec = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, num_classes=3)
    model = _checkpoint(tmp_path / "m.pt", spec, 32)
    wrong = 0
    for label, c in enumerate(("cat", "dog", "ship")):
        for f in sorted((data / "val" / c).iterdir()):
            x = torch.from_numpy(np.array(Image.open(f).convert("RGB")))
            x = normalize(x.permute(2, 0, 1)[None], [0.5, 0.4, 0.3], [0.25] * 3)
            wrong += int(model(x).argmax(1).item() != label)
    base = ["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--dataset", "folder"]
    assert main([*base, "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 9 and result["top1_error"] == pytest.approx(100 * wrong / 9)
    assert result["top5_error"] is None  # three classes: always in the top 5, so not reported
    assert main([*base, "--data", str(data), "--resize", "32", "--crop", "24", "--ten-crop"]) == 0
    assert "9 val images, resize 32, ten-crop 24" in capsys.readouterr().out


def test_evaluate_320_crop(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    spec = ModelSpec("imagenet", "bottleneck", (1, 1, 1, 1), 2, 4, num_classes=3)
    _checkpoint(tmp_path / "m.pt", spec, 224)
    args = ["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--dataset", "folder"]
    assert main([*args, "--data", str(data), "--crop", "320", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["resize"], result["crop"], result["images"]) == (320, 320, 9)
    assert main([*args, "--data", str(tmp_path), "--crop", "320"]) == 2
    assert capsys.readouterr().err.startswith("resnext: error: no val or test folder")


RUN = ["train", "--recipe", "tiny", "--epochs", "1", "--set", "train_limit=32",
       "--set", "val_limit=16"]  # fmt: skip


def _files(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def test_eval_interpolation_is_validated_with_and_saved(tmp_path, monkeypatch, capsys):
    seen = []
    real = resnext.training.train.eval_batches

    def spy(data, batch, pre, *args):
        seen.append(pre.interpolation)
        return real(data, batch, pre, *args)

    monkeypatch.setattr(resnext.training.train, "eval_batches", spy)
    out = tmp_path / "run"
    assert main([*RUN, "--set", "eval_interpolation=bicubic", "--out", str(out)]) == 0
    assert seen and set(seen) == {"bicubic"}
    assert read_model_file(out / "last.pt")["preprocessing"]["interpolation"] == "bicubic"
    assert resnext.load_model(out / "last.pt").preprocessing.interpolation == "bicubic"


def test_out_holding_a_run_is_refused_unless_overwrite(tiny_run, capsys):
    run = tiny_run
    before = _files(run)
    assert main([*RUN, "--model", "resnext20_2x32d_p16", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"resnext: error: {run} already holds a run")
    assert "--resume auto" in err and "--overwrite" in err and _files(run) == before
    assert main([*RUN, "--model", "resnext11_2x8d", "--out", str(run), "--overwrite"]) == 0
    assert read_model_file(run / "best.pt")["model_name"] == "resnext11_2x8d"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_resuming_a_finished_run_touches_nothing(tiny_run, capsys):
    run = tiny_run
    before = _files(run)
    assert main(["train", "--out", str(run), "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run} is already finished (1 epochs)") and out.count("\n") == 1
    assert _files(run) == before
    # Another change than epochs is checked as for any resume: here refused, still untouched.
    assert main(["train", "--out", str(run), "--resume", "auto", "--model", "resnext11_2x8d"]) == 2
    assert "cannot resume: the checkpoint holds" in capsys.readouterr().err
    assert _files(run) == before
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # more: continues
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2  # fewer: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run} has trained 2 epochs; epochs=1 is fewer" in err


def test_relative_data_is_stored_absolute(tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "small", ("cat", "dog"), 4)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--recipe", "tiny", "--dataset", "folder", "--data", "small", "--epochs", "1",
            "--batch-size", "4", "--set", "train_size=32", "--set", "eval_resize=32",
            "--set", "eval_crop=32", "--set", "mean=0.5,0.5,0.5", "--set", "std=0.25,0.25,0.25",
            "--set", "model=resnext11_2x8d"]  # fmt: skip
    assert main([*args, "--out", "run"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved == str(tmp_path / "small")
    monkeypatch.chdir(tmp_path / "small")  # another directory: the run still finds its data
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main([*args[:6], "missing", *args[7:], "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'small' / 'missing'} does not exist" in err


def test_the_split_validated_on_is_named(tmp_path, capsys, caplog):
    """A folder with val/ and test/: training validates on val/ and says so; evaluate takes
    either with --split."""
    data = write_image_folder(tmp_path / "data", ("cat", "dog"), 4, splits=("train", "val"))
    write_image_folder(data, ("cat", "dog"), 3, splits=("test",))
    args = ["train", "--recipe", "tiny", "--dataset", "folder", "--data", str(data),
            "--epochs", "1", "--batch-size", "4", "--set", "train_size=32",
            "--set", "eval_resize=32", "--set", "eval_crop=32", "--set", "mean=0.5,0.5,0.5",
            "--set", "std=0.25,0.25,0.25", "--set", "model=resnext11_2x8d"]  # fmt: skip
    with caplog.at_level("INFO", logger="resnext.training.train"):
        assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert "validating on the val split (8 images)" in caplog.text
    assert f"{data / 'test'} stays untouched" in caplog.text
    assert capsys.readouterr().out.startswith("val accuracy ")
    evaluate = ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"),
                "--dataset", "folder", "--data", str(data), "--json"]  # fmt: skip
    for split, images in ((None, 8), ("val", 8), ("test", 6)):
        assert main(evaluate + (["--split", split] if split else [])) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["split"], result["images"]) == (split or "val", images)
    assert main(["train", "--recipe", "tiny", "--epochs", "1", "--out", str(tmp_path / "d"),
                 "--set", "train_limit=32", "--set", "val_limit=16"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("test accuracy ")  # digits: its test split


def test_resume_on_other_classes_names_them(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", ("cat", "dog"), 4)
    args = ["train", "--recipe", "tiny", "--dataset", "folder", "--data", str(data),
            "--epochs", "1", "--batch-size", "4", "--set", "train_size=32",
            "--set", "eval_resize=32", "--set", "eval_crop=32", "--set", "mean=0.5,0.5,0.5",
            "--set", "std=0.25,0.25,0.25", "--set", "model=resnext11_2x8d"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    for split in ("train", "val"):
        (data / split / "dog").rename(data / split / "wolf")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only the checkpoint has 'dog'" in err
    assert "only the data has 'wolf'" in err
