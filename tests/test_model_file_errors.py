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


# Damaged files: every damage is a CheckpointError (a ValueError) in one line naming the file and
# the field, never the TypeError, NotImplementedError or UnicodeDecodeError of the code below us.

DAMAGE_SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 3, base_planes=16)
DAMAGE_PRE = Preprocessing(8, 8, mean=(0.5,) * 3, std=(0.25,) * 3).to_dict()
GOOD_META = {"spec": DAMAGE_SPEC.to_dict(), "class_names": ["a", "b", "c"]}


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint and the ONNX, TorchScript and .pt2 files `export` wrote from it."""
    from resnext.files.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("sound")
    payload = {"model": build_model(DAMAGE_SPEC).state_dict(), "preprocessing": DAMAGE_PRE}
    files = {"pt": save_checkpoint(tmp / "model.pt", payload | GOOD_META)}
    for fmt, suffix in [("onnx", ".onnx"), ("torchscript", ".ts"), ("exported-program", ".pt2")]:
        files[fmt] = tmp / f"model{suffix}"
        export_checkpoint(files["pt"], fmt, files[fmt])
    return files


def central_entries(data: bytes, change) -> bytes:
    """`data` (a zip) with `change(bytearray, offset)` applied to each central directory entry."""
    out, at = bytearray(data), 0
    while (at := out.find(b"PK\x01\x02", at)) >= 0:
        change(out, at)
        at += 4
    return bytes(out)


def zip_version_99(out: bytearray, at: int) -> None:
    out[at + 6 : at + 8] = (99).to_bytes(2, "little")  # "version needed to extract": 9.9


def non_utf8_name(out: bytearray, at: int) -> None:
    flags = int.from_bytes(out[at + 8 : at + 10], "little") | 0x800  # names are UTF-8
    out[at + 8 : at + 10] = flags.to_bytes(2, "little")
    out[at + 46] = 0xFF  # the name's first byte: never UTF-8


def with_metadata(sound, fmt: str, path: Path, meta: dict) -> Path:
    """The sound file of `fmt` with `meta` replacing fields of its resnext metadata."""
    import json
    import zipfile

    import onnx

    if fmt == "pt":
        state = build_model(DAMAGE_SPEC).state_dict()
        return save_checkpoint(
            path, {"model": state, "preprocessing": DAMAGE_PRE} | GOOD_META | meta
        )
    if fmt == "safetensors":
        from resnext import save_safetensors

        state = build_model(DAMAGE_SPEC).state_dict()
        return save_safetensors(path, state, {"preprocessing": DAMAGE_PRE} | GOOD_META | meta)
    if fmt == "onnx":
        proto = onnx.load(str(sound["onnx"]))
        props = {p.key: p.value for p in proto.metadata_props}
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props | {k: json.dumps(v) for k, v in meta.items()})
        onnx.save(proto, str(path))
        return path
    with zipfile.ZipFile(sound[fmt]) as z, zipfile.ZipFile(path, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith("/extra/resnext.json"):
                data = json.dumps(json.loads(data) | meta).encode()
            out.writestr(info, data)
    return path


def damaged_onnx(sound, path: Path, damage: str) -> Path:
    """The sound ONNX file with one initializer changed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(sound["onnx"]))
    tensors = {t.name: t for t in proto.graph.initializer}
    if damage == "reshape":  # the flatten before fc: a shape no batch can take
        shape = next(n for n in proto.graph.node if n.op_type == "Reshape").input[1]
        new = numpy_helper.from_array(np.array([7, -1], dtype=np.int64), shape)
    elif damage == "conv":  # a weight cut short: ONNX Runtime runs it without a word
        w = numpy_helper.to_array(tensors["layer2.0.conv1.weight"])[:, :60]
        new = numpy_helper.from_array(np.ascontiguousarray(w), "layer2.0.conv1.weight")
    else:  # a bias of the wrong length
        new = numpy_helper.from_array(np.zeros(5, np.float32), "fc.bias")
    tensors[new.name].CopyFrom(new)
    onnx.save(proto, str(path))
    return path


METADATA_DAMAGES = {
    "preprocessing-int": ({"preprocessing": 5}, "preprocessing"),
    "class_names-int": ({"class_names": 5}, "class_names"),
    "class_names-of-ints": ({"class_names": [1, 2, 3]}, "class_names"),
    "spec-int": ({"spec": 5}, "spec"),
    "spec-misspelt": ({"spec": DAMAGE_SPEC.to_dict() | {"cardinalty": 2}}, "cardinalty"),
    "model_name-int": ({"model_name": 5}, "model_name"),
}
DAMAGES = {
    "zip-version": (
        lambda s, p: p.write_bytes(central_entries(s["pt"].read_bytes(), zip_version_99)) and p,
        "zip file version 9.9",
    ),
    "zip-member-name": (
        lambda s, p: p.write_bytes(central_entries(s["pt"].read_bytes(), non_utf8_name)) and p,
        "member name",
    ),
    **{
        f"{fmt}-{name}": (
            lambda s, p, fmt=fmt, meta=meta: with_metadata(s, fmt, p, meta),
            word,
        )
        for fmt in ("pt", "safetensors", "onnx", "torchscript", "exported-program")
        for name, (meta, word) in METADATA_DAMAGES.items()
    },
    "onnx-reshape": (lambda s, p: damaged_onnx(s, p, "reshape"), "Reshape"),
    "onnx-conv-weight": (lambda s, p: damaged_onnx(s, p, "conv"), "ShapeInferenceError"),
    "onnx-bias": (lambda s, p: damaged_onnx(s, p, "bias"), "ShapeInferenceError"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_damaged_file_is_one_line_naming_the_file_and_the_field(sound, tmp_path, damage):
    """The rule: whatever is damaged, load_model raises CheckpointError in one line with the
    file's name and the damaged field, at load, not at the first run."""
    from resnext import load_model
    from resnext.files.checkpoint import CheckpointError

    write, word = DAMAGES[damage]
    suffix = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".ts"}
    path = tmp_path / f"damaged{suffix.get(damage.split('-')[0], '.pt')}"
    if damage.startswith("exported-program"):
        path = tmp_path / "damaged.pt2"
    path = write(sound, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path, trusted=True)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and word in msg, msg


def test_a_graph_that_fails_only_when_run_is_one_line_from_the_cli(sound, tmp_path):
    """ONNX Runtime also logs its error to stderr itself: the check at load keeps it quiet."""
    path = damaged_onnx(sound, tmp_path / "damaged.onnx", "reshape")
    Image.new("RGB", (12, 10), (10, 200, 30)).save(tmp_path / "photo.png")
    exe = Path(sys.executable).parent / "resnext"
    argv = [str(exe), "predict", "--checkpoint", str(path), str(tmp_path / "photo.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and f"cannot run {path}" in done.stderr, done.stderr


@pytest.mark.parametrize("batch", ["dynamic", "static"])
def test_the_check_at_load_passes_sound_onnx_files(sound, tmp_path, batch):
    """A fixed batch of 2 (`--batch static --spatial static`) is run at its own shape."""
    from resnext import load_model
    from resnext.files.export import export_checkpoint

    path = sound["onnx"]
    if batch == "static":
        path = tmp_path / "static.onnx"
        export_checkpoint(sound["pt"], "onnx", path, dynamic=False, spatial=False)
    model = load_model(path)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
