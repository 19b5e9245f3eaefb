"""Mistaken inputs: each gets one line naming what is wrong, exit status 2, no traceback.

A few go through the real console script; the rest through `resnext.cli.main` in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnext.cli import main
from resnext.files.checkpoint import save_checkpoint
from resnext.files.model_file import read_model_file

from conftest import digit_image, write_image_folder


class Planted:
    """Unpickling this would run `print`; a safe loader refuses it before that."""

    def __reduce__(self):
        return (print, ("planted code ran",))


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """A finished tiny run, image folders, and broken or foreign checkpoint files."""
    tmp = tmp_path_factory.mktemp("inputs")
    run = tmp / "run"
    assert main(["train", "--recipe", "tiny", "--out", str(run), "--epochs", "1",
                 "--set", "train_limit=32", "--set", "val_limit=16"]) == 0  # fmt: skip
    write_image_folder(tmp / "folder", per_class=1)
    (tmp / "flat" / "train").mkdir(parents=True)
    digit_image(0, 0).save(tmp / "flat" / "train" / "0.jpg")
    (tmp / "file").write_text("a regular file\n")
    torch.save({"model": Planted()}, tmp / "planted.pt")
    data = (run / "last.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 3])
    (tmp / "torn").mkdir()
    (tmp / "torn" / "last.pt").write_bytes(data[: len(data) // 3])
    ckpt = read_model_file(run / "last.pt")
    save_checkpoint(tmp / "shapes.pt", {**ckpt, "spec": {**ckpt["spec"], "num_classes": 3}})
    (tmp / "empty").mkdir()
    names = ("run", "folder", "flat", "file", "planted.pt", "truncated.pt", "torn", "shapes.pt")
    return {"tmp": str(tmp), "empty": str(tmp / "empty")} | {
        n.split(".")[0]: str(tmp / n) for n in names
    }


TRAIN = ["train", "--out", "{tmp}/new"]
EVAL = ["evaluate", "--dataset", "digits", "--checkpoint"]
CASES = [
    # Names.
    ("unknown model", [*TRAIN, "--model", "resnext51_32x4d"], "unknown model 'resnext51_32x4d'"),
    ("unknown recipe", [*TRAIN, "--recipe", "imagenet22k"], "unknown recipe 'imagenet22k'"),
    ("unknown dataset", [*TRAIN, "--dataset", "mnist"], "argument --dataset: invalid choice"),
    ("unknown dataset key", [*TRAIN, "--set", "dataset=mnist"], "dataset must be one of"),
    ("unknown form", [*TRAIN, "--set", "form=d"], "form must be one of ['a', 'b', 'c']"),
    ("unknown config key", [*TRAIN, "--set", "cardinality=8"], "unknown config key 'cardinality'"),
    ("bad images policy", [*TRAIN, "--set", "bad_images=maybe"], "bad_images must be one of"),
    # Architecture: a width too narrow for the paths it is split into.
    ("zero-width paths", [*TRAIN, "--model", "resnext11_4x2d_p16"], "gives zero-width paths"),
    # Numbers.
    ("zero batch size", [*TRAIN, "--batch-size", "0"], "batch_size must be positive, got 0"),
    ("negative batch size", [*TRAIN, "--set", "batch_size=-4"], "batch_size must be positive"),
    ("zero lr", [*TRAIN, "--lr", "0"], "lr must be positive, got 0.0"),
    ("negative lr", [*TRAIN, "--lr", "-0.1"], "lr must be positive, got -0.1"),
    ("zero epochs", [*TRAIN, "--epochs", "0"], "epochs must be positive, got 0"),
    ("text for a number", [*TRAIN, "--set", "epochs=ten"], "epochs expects int, got 'ten'"),
    ("negative limit", [*TRAIN, "--set", "train_limit=-5"], "train_limit must not be negative"),
    (
        "mean of 3 for grey",
        [*TRAIN, "--set", "mean=0.5,0.5,0.5", "--set", "std=0.2,0.2,0.2"],
        "mean/std have 3 values for 1 channels",
    ),  # fmt: skip
    ("negative workers", [*EVAL, "{run}/last.pt", "--workers", "-1"], "--workers must not be"),
    (
        "resize below crop",
        [*EVAL, "{run}/last.pt", "--resize", "4", "--crop", "8"],
        "--resize 4 is smaller than --crop 8",
    ),  # fmt: skip
    # Data.
    (
        "data path missing",
        [*TRAIN, "--dataset", "folder", "--data", "{tmp}/nowhere"],
        "no train folder in '{tmp}/nowhere'",
    ),  # fmt: skip
    (
        "no class folders",
        [*TRAIN, "--dataset", "folder", "--data", "{flat}"],
        "no class folders in {flat}/train",
    ),  # fmt: skip
    ("no cifar files", [*TRAIN, "--dataset", "cifar10", "--data", "{empty}"], "no cifar10 data"),
    # Output.
    ("out under a file", ["train", "--out", "{file}/run"], "cannot create the run directory"),
    ("no out", ["train"], "--out RUN_DIR is required"),
    # Checkpoints.
    (
        "other class count",
        [*EVAL[:2], "folder", "--data", "{folder}", "--checkpoint", "{run}/last.pt"],
        "was trained on other classes",
    ),  # fmt: skip
    (
        "other architecture",
        ["train", "--resume", "{run}", "--model", "resnext11_2x16d_p16"],
        "cannot resume: the checkpoint holds cardinality=4",
    ),  # fmt: skip
    (
        "resume, other classes",
        [
            "train",
            "--resume",
            "{run}",
            "--dataset",
            "folder",
            "--data",
            "{folder}",
            "--set",
            "train_size=32",
            "--set",
            "eval_resize=32",
            "--set",
            "eval_crop=32",
            "--set",
            "mean=0.5,0.5,0.5",
            "--set",
            "std=0.2,0.2,0.2",
            "--batch-size",
            "2",  # the folder's 3 images fill a batch
        ],
        "cannot resume: the checkpoint holds num_classes=10, in_channels=1; this run needs "
        "num_classes=3, in_channels=3",
    ),  # fmt: skip
    ("nothing to resume", ["train", "--resume", "{empty}"], "nothing to resume"),
    (
        "resume another dir",
        ["train", "--resume", "{run}", "--out", "{empty}"],
        "name different run directories",
    ),  # fmt: skip
    ("planted pickle", [*EVAL, "{planted}"], "refusing to load"),
    ("truncated checkpoint", [*EVAL, "{truncated}"], "truncated or corrupt"),
    ("truncated last.pt", ["train", "--resume", "{torn}"], "truncated or corrupt"),
    ("wrong shapes", [*EVAL, "{shapes}"], "weights do not fit its spec"),
    ("missing checkpoint", [*EVAL, "{tmp}/none.pt"], "none.pt does not exist"),
]
CONSOLE = {"unknown model", "out under a file", "planted pickle"}


def check(err: str, message: str, paths: dict) -> None:
    assert err.startswith("resnext: error: "), err
    assert message.format(**paths) in err and err.count("\n") == 1, err
    assert "Traceback" not in err and "planted code ran" not in err


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_one_line_and_exit_2(argv, message, paths, capsys):
    argv = [a.format(**paths) for a in argv]
    if any(argv == [a.format(**paths) for a in c[1]] for c in CASES if c[0] in CONSOLE):
        exe = Path(sys.executable).parent / "resnext"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [str(exe), *argv], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 2 and proc.stdout == ""
        check(proc.stderr, message, paths)
    else:
        assert main(argv) == 2
        check(capsys.readouterr().err, message, paths)
    assert not Path(paths["tmp"], "new").exists()
