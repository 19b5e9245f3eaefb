"""Files that are no model, missing extras, closed pipes: one line and a clear exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from resnext import ModelSpec, Preprocessing, build_model
from resnext.cli import main
from resnext.files.checkpoint import save_checkpoint

SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 3, base_planes=16)


class Planted:
    """Unpickling this writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Each file that is no model, and a word its one-line error must hold."""
    good = tmp / "good.pt"
    torch.save({"model": build_model(SPEC).state_dict()}, good)
    files = {
        "text": (tmp / "notes.pt", "not a model file"),
        "empty": (tmp / "empty.pth", "empty"),
        "truncated": (tmp / "truncated.pt", "truncated or corrupt"),
        "mobilenet": (tmp / "mobilenet_v3_small.pth", "not a ResNet/ResNeXt"),
        "planted": (tmp / "planted.pt", "could run code"),
        "safetensors": (tmp / "torn.safetensors", "truncated or corrupt"),
    }
    files["text"][0].write_text("hello, I am a text file\n" * 10)
    files["empty"][0].write_bytes(b"")
    files["truncated"][0].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(
        torchvision.models.mobilenet_v3_small(weights=None).state_dict(), files["mobilenet"][0]
    )
    torch.save({"model": Planted(tmp / "pwned")}, files["planted"][0])
    files["safetensors"][0].write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a": {"dtype"')
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp / "photo.png")
    return tmp, bad_files(tmp)


COMMANDS = {
    "evaluate": lambda f, t: ["evaluate", "--checkpoint", f, "--dataset", "digits"],
    "predict": lambda f, t: ["predict", "--checkpoint", f, str(t / "photo.png")],
    "export": lambda f, t: [
        "export",
        "--checkpoint",
        f,
        "--format",
        "torchscript",
        "--out",
        str(t / "out.ts"),
    ],  # fmt: skip
    "convert": lambda f, t: ["convert", f, "--from", "torchvision", "--out", str(t / "out.pt")],
}
FILES = ["text", "empty", "truncated", "mobilenet", "planted", "safetensors"]


@pytest.mark.parametrize("kind", FILES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_that_is_no_model_is_one_line_and_exit_2(inputs, capsys, command, kind):
    tmp, files = inputs
    path, reason = files[kind]
    assert main(COMMANDS[command](str(path), tmp)) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnext: error: ") and err.count("\n") == 1, err
    assert str(path) in err and reason in err, err
    assert not (tmp / "pwned").exists() and not (tmp / "out.pt").exists()


def checkpoint(tmp: Path) -> Path:
    pre = Preprocessing(32, 32, mean=(0.5,) * 3, std=(0.25,) * 3).to_dict()
    payload = {"model": build_model(SPEC).state_dict(), "spec": SPEC.to_dict()}
    return save_checkpoint(tmp / "model.pt", payload | {"preprocessing": pre})


@pytest.mark.parametrize(
    "hidden, argv",
    [
        (
            ("onnx",),
            ["export", "--checkpoint", "{ckpt}", "--format", "onnx", "--out", "{tmp}/m.onnx"],
        ),
        (
            ("onnxscript",),
            ["export", "--checkpoint", "{ckpt}", "--format", "onnx", "--out", "{tmp}/m.onnx"],
        ),  # fmt: skip
        (
            ("safetensors", "safetensors.torch"),
            ["convert", "{ckpt}", "--from", "resnext", "--out", "{tmp}/m.safetensors"],
        ),  # fmt: skip
        (("timm",), ["convert", "{ckpt}", "--from", "timm", "--out", "{tmp}/m.pt"]),
    ],
    ids=["onnx", "onnxscript", "safetensors", "timm"],
)
def test_a_missing_extra_is_a_one_line_hint(tmp_path, monkeypatch, capsys, hidden, argv):
    ckpt = checkpoint(tmp_path)
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    argv = [a.format(ckpt=ckpt, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    extra = "timm" if hidden == ("timm",) else "export"
    assert f"pip install 'resnext[{extra}]'" in err and err.count("\n") == 1, err
    assert len(list(tmp_path.iterdir())) == 1  # nothing written but the checkpoint


def test_a_closed_pipe_ends_quietly(tmp_path):
    ckpt = checkpoint(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(400):
        Image.new("RGB", (8, 8), (i % 256, 7, 7)).save(folder / f"{i:03d}{'_' * 100}.png")
    exe = Path(sys.executable).parent / "resnext"
    argv = [str(exe), "predict", "--checkpoint", str(ckpt), str(folder), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 400 lines of ~300 bytes overfill a 64 KiB pipe: the writer blocks until the reader has gone.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert first.startswith(b'{"path"') and err == "", err


def test_safetensors_metadata_that_is_no_json_object_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "list.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"resnext": "[1, 2]"})
    assert main(["predict", "--checkpoint", str(path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an object" in err, err


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_a_device_is_not_a_regular_file(tmp_path, capsys):
    assert main(["predict", "--checkpoint", "/dev/null", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err, err
