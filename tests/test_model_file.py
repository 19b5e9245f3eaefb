"""model_file.py and checkpoint.py against each format's own writer and reader.

Files come from torch.save (zip and legacy), safetensors' save_file, torch.jit.save,
torch.export.save and onnx.save; what our reader returns is compared with torch.load and
safe_open, and what our writers write is read back with those. Each rule holds under every suffix,
for every cut of a torn file and for every umask.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import resource
import shutil
import signal
import stat
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import safetensors.torch
import tomllib
import torch
from onnx import TensorProto, helper
from safetensors import safe_open
from safetensors.torch import save_file

from resnext import Preprocessing
from resnext.files import sources
from resnext.files.checkpoint import (
    FORMAT,
    CheckpointError,
    current_umask,
    remove_stale_temporaries,
    save_checkpoint,
)
from resnext.files.model_file import (
    checkpoint_metadata,
    file_kind,
    read_model_file,
    resolve,
    save_model_file,
    save_safetensors,
)

from conftest import one_line_error

SUFFIXES = [".pt", ".pth", ".bin", ".safetensors", ".onnx", ".pt2", ".ckpt", ""]
# The documented keys that describe a model (module docstring of files/model_file.py).
DESCRIBING = ("spec", "model_name", "class_names", "preprocessing", "config", "metrics", "source")
PRE = Preprocessing(40, 32, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=g),
        "bn1.running_mean": torch.randn(4, generator=g).half(),
        "bn1.num_batches_tracked": torch.tensor(7),
        "fc.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "mask": torch.rand(6, generator=g) > 0.5,
        "codes": torch.randint(0, 255, (2, 3), generator=g, dtype=torch.uint8),
    }


def payload() -> dict:
    return {
        "model": tensors(),
        "spec": {"stem": "cifar", "depths": [1, 1, 1]},
        "class_names": ["cat", "dog"],
        "preprocessing": PRE.to_dict(),
        "epoch": 3,
        "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1}]},
    }


class Planted:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Affine(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2


def onnx_bytes() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, bytes]:
    """The bytes each format's own writer produced, by the kind file_kind must name."""
    tmp = tmp_path_factory.mktemp("writers")
    torch.save(payload(), tmp / "zip")
    torch.save(payload(), tmp / "legacy", _use_new_zipfile_serialization=False)
    meta = {"resnext": json.dumps({"class_names": ["a", "b"]}), "format": "pt"}
    save_file(tensors(), str(tmp / "st"), metadata=meta)
    torch.jit.save(torch.jit.trace(Affine(), torch.randn(1, 3)), tmp / "ts")
    program = torch.export.export(Affine(), (torch.randn(1, 3),), strict=False)
    torch.export.save(program, tmp / "ep")
    (tmp / "onnx").write_bytes(onnx_bytes())
    return {
        "torch": (tmp / "zip").read_bytes(),
        "torch-legacy": (tmp / "legacy").read_bytes(),
        "safetensors": (tmp / "st").read_bytes(),
        "torchscript": (tmp / "ts").read_bytes(),
        "exported-program": (tmp / "ep").read_bytes(),
        "onnx": (tmp / "onnx").read_bytes(),
    }


def put(tmp: Path, data: bytes, suffix: str, name: str = "model") -> Path:
    path = tmp / f"{name}{suffix}"
    path.write_bytes(data)
    return path


def assert_same(got, want) -> None:
    """Equal nested dicts/lists of tensors (same dtype, shape, values) and plain values."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same(a, b)
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
        assert torch.equal(got, want)
    else:
        assert got == want


def error_of(path: Path, **kw) -> str:
    return one_line_error(read_model_file, path, **kw)


WRITER_KIND = {
    "torch": "torch",
    "torch-legacy": "torch",
    "safetensors": "safetensors",
    "torchscript": "torchscript",
    "exported-program": "exported-program",
}


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("writer", list(WRITER_KIND))
def test_the_kind_is_what_wrote_the_file_whatever_its_suffix(tmp_path, written, writer, suffix):
    assert file_kind(put(tmp_path, written[writer], suffix)) == WRITER_KIND[writer]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_onnx_is_known_by_its_suffix_alone(tmp_path, written, suffix):
    path = put(tmp_path, written["onnx"], suffix)
    assert onnx.load(str(path)).graph.node[0].op_type == "Relu"  # a valid ONNX file, any name
    # A protobuf has no signature: only .onnx names it, and .safetensors goes to safetensors.
    want = {".onnx": "onnx", ".safetensors": "safetensors"}.get(suffix)
    assert file_kind(path) == want
    if want is None:
        assert "is not a model file (neither a PyTorch nor a safetensors file)" in error_of(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("writer", ["torch", "torch-legacy"])
def test_torch_files_read_as_torch_load_reads_them(tmp_path, written, writer, suffix):
    path = put(tmp_path, written[writer], suffix)
    with open(path, "rb") as f:  # torch.load gives a path named *.safetensors to safetensors
        want = torch.load(f, weights_only=True)
    assert_same(read_model_file(path), want)
    on_meta = read_model_file(path, map_location="meta")["model"]["conv1.weight"]
    assert on_meta.device.type == "meta" and on_meta.shape == want["model"]["conv1.weight"].shape


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_safetensors_read_as_safe_open_reads_them(tmp_path, written, suffix):
    path = put(tmp_path, written["safetensors"], suffix)
    with safe_open(str(path), framework="pt") as f:
        want = {k: f.get_tensor(k) for k in f.keys()}
        ours = json.loads(f.metadata()["resnext"])
    got = read_model_file(path)
    # Our metadata (a JSON object under "resnext") joins the tensors; other metadata does not.
    assert set(got) == {"model", *ours}
    assert_same(got["model"], want)
    assert all(got[k] == v for k, v in ours.items())


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("writer", ["torchscript", "exported-program", "onnx"])
def test_exported_programs_are_no_weights(tmp_path, written, writer, suffix):
    path = put(tmp_path, written[writer], suffix)
    kind = file_kind(path)
    if kind == writer:  # ONNX is recognised by its suffix only
        assert error_of(path) == (
            f"{path} is an exported {writer} file, not weights: evaluate and predict run it; "
            "other commands need the checkpoint it was exported from"
        )
    else:
        assert writer == "onnx" and suffix != ".onnx"


@pytest.mark.parametrize("writer", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors", ""])
def test_code_in_a_file_never_runs(tmp_path, monkeypatch, writer, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"planted{suffix}"
    obj = {"w": torch.ones(3), "model": Planted(marker)}
    if writer == "pickle":  # one plain pickle, as pickle.dump writes it
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=writer == "zip")
    # An environment that tells torch to unpickle anything by default changes nothing here.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert error_of(path) == (
        f"refusing to load {path}: it holds objects other than tensors and plain data, "
        "and unpickling them could run code"
    )
    assert not marker.exists()


def cuts(size: int) -> list[int]:
    """Lengths of torn copies: every short head, and ~40 spread over the rest."""
    return sorted({*range(1, 12), *range(12, size, max(1, size // 40)), size - 1})


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
@pytest.mark.parametrize("writer", list(WRITER_KIND))
def test_a_torn_file_is_one_line_never_weights(tmp_path, written, writer, suffix):
    whole = written[writer]
    for n in cuts(len(whole)):
        path = put(tmp_path, whole[:n], suffix)
        msg = error_of(path)
        if whole.startswith(b"PK") and n >= 2:  # a torn zip is left to torch.load to name
            assert file_kind(path) == "torch"
        if n >= 9 and writer == "safetensors":  # whatever the suffix
            assert msg.startswith(f"cannot read {path}: truncated or corrupt safetensors"), msg
        elif n >= 9:
            assert msg.startswith(f"cannot read {path}: truncated or corrupt"), (n, msg)
        else:
            assert "truncated or corrupt" in msg or "not a model file" in msg, (n, msg)


@pytest.mark.parametrize("writer", ["torch", "torch-legacy"])
def test_a_torn_torch_file_names_torchs_first_sentence(tmp_path, written, writer):
    whole = written[writer]
    for n in range(9, len(whole), max(1, len(whole) // 25)):
        path = put(tmp_path, whole[:n], ".pt")
        msg = error_of(path)
        with pytest.raises(Exception) as ref:  # torch's own complaint
            torch.load(path, weights_only=True)
        e = ref.value
        first = str(e).strip().splitlines()[0].strip() if str(e).strip() else type(e).__name__
        if "weights only load failed" in first.lower():  # torch blames safety: we do not
            assert msg == f"cannot read {path}: truncated or corrupt"
        else:
            assert msg == f"cannot read {path}: truncated or corrupt ({first.split('. ')[0]})"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_empty_file_says_so(tmp_path, suffix):
    path = put(tmp_path, b"", suffix)
    with pytest.raises(CheckpointError, match="is empty, not a model file"):
        file_kind(path)
    assert "is empty" in error_of(path)


FOREIGN = {
    "text": b"hello, I am a text file {not json}\n" * 4,
    "json": json.dumps({"model": [1, 2, 3]}).encode(),
    "random": bytes(torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1))),
    "numbers": (12345).to_bytes(8, "little") + b"[1, 2]",
}


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt", ""])
@pytest.mark.parametrize("name", list(FOREIGN))
def test_a_foreign_file_is_not_a_model_file(tmp_path, name, suffix):
    path = put(tmp_path, FOREIGN[name], suffix)
    assert file_kind(path) is None
    assert "is not a model file" in error_of(path)


@pytest.mark.parametrize("name", list(FOREIGN))
def test_safetensors_names_what_is_wrong_with_a_foreign_dot_safetensors(tmp_path, name):
    path = put(tmp_path, FOREIGN[name], ".safetensors")
    assert file_kind(path) == "safetensors"
    with pytest.raises(Exception) as ref:
        safe_open(str(path), framework="pt")
    assert f"truncated or corrupt safetensors file ({str(ref.value).splitlines()[0]}" in (
        error_of(path)
    )


@pytest.mark.parametrize("size", [0, 1, 2, 19, 20, 21, 100_000_000, 100_000_001, 2**40])
def test_a_safetensors_header_length_is_what_safetensors_accepts(tmp_path, size):
    head = b'{"__metadata__": {}}'  # 20 bytes
    path = put(tmp_path, size.to_bytes(8, "little") + head, ".bin")
    try:
        with safe_open(str(path), framework="pt") as f:
            verdict = f"whole {list(f.keys())}"
    except Exception as e:  # safetensors' own verdict on the length
        verdict = str(e)
    # A header of length 0 holds no "{"; one over safetensors' limit is no such file.
    ours = size > 0 and "header too large" not in verdict
    assert file_kind(path) == ("safetensors" if ours else None), verdict
    if verdict == "whole []":
        assert read_model_file(path) == {"model": {}}
    elif ours:
        assert f"truncated or corrupt safetensors file ({verdict})" in error_of(path)
    else:
        assert "is not a model file" in error_of(path)


ZIPS = [
    (["m/code/__torch__/m.py", "m/data.pkl"], "torchscript"),
    (["m/archive_format", "m/models/model.json"], "exported-program"),
    (["readme.txt"], "torch"),
    (["a/b/code/x.py", "a/b/archive_format"], "torch"),  # deeper than an archive's folder
    (["a/data.pkl", "a/codes.txt"], "torch"),
]


@pytest.mark.parametrize("names, kind", ZIPS)
@pytest.mark.parametrize("suffix", [".pt", ".zip"])
def test_a_zip_is_named_by_its_archive_folder(tmp_path, names, kind, suffix):
    path = tmp_path / f"archive{suffix}"
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            z.writestr(n, "x")
    assert file_kind(path) == kind
    if kind == "torch":  # no torch.save archive: torch.load says why
        assert "truncated or corrupt" in error_of(path)


@pytest.mark.parametrize("obj", [torch.zeros(2), [1, 2], 3, "weights", (torch.ones(1),)])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_file_that_holds_no_dict_names_what_it_holds(tmp_path, obj, legacy):
    path = tmp_path / "x.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    msg = error_of(path)
    assert msg == f"{path} holds a {type(obj).__name__}, not weights or a checkpoint"


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"a"', "2.5", "true"])
def test_safetensors_metadata_must_be_a_json_object(tmp_path, text):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"resnext": text})
    kind = type(json.loads(text)).__name__
    assert error_of(path) == f"{path}: resnext metadata is a JSON {kind}, not an object"


@pytest.mark.parametrize("text", ["{", "not json", '{"a": }'])
def test_unreadable_safetensors_metadata_is_one_line(tmp_path, text):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"resnext": text})
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(text)
    assert error_of(path) == f"{path}: unreadable resnext metadata ({ref.value})"


def test_a_folder_and_a_missing_file_each_say_so(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path} is a folder, not a model file"
    gone = tmp_path / "gone.pt"
    assert error_of(gone) == f"{gone} does not exist (no such model file)"


def test_resolve_fetches_only_remote_sources_that_are_no_local_file(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(sources, "fetch", lambda s: fetched.append(s) or tmp_path / "cached.pt")
    assert resolve("torchvision:resnext50_32x4d") == tmp_path / "cached.pt"
    assert resolve("timm:resnext26ts.ra2_in1k") == tmp_path / "cached.pt"
    assert fetched == ["torchvision:resnext50_32x4d", "timm:resnext26ts.ra2_in1k"]
    monkeypatch.chdir(tmp_path)
    Path("timm:local.pt").write_bytes(b"x")  # a local file that merely looks remote
    assert resolve("timm:local.pt") == Path("timm:local.pt") and len(fetched) == 2


def pyproject_extra_of(module: str) -> set[str]:
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(path.read_text())["project"]["optional-dependencies"]
    return {k for k, reqs in extras.items() if any(r.startswith(module) for r in reqs)}


@pytest.mark.parametrize("module", ["safetensors", "safetensors.torch"])
def test_without_safetensors_the_hint_names_the_extra_that_installs_it(
    tmp_path, written, monkeypatch, module
):
    path = put(tmp_path, written["safetensors"], ".safetensors")
    monkeypatch.setitem(sys.modules, module, None)
    extras = pyproject_extra_of("safetensors") - {"test", "all", "dev"}
    with pytest.raises(ImportError) as e:
        if module == "safetensors":
            read_model_file(path)
        else:
            save_safetensors(tmp_path / "out.safetensors", tensors())
    verb = "reading" if module == "safetensors" else "writing"
    hints = {
        f"{verb} safetensors files needs the '{x}' extra: pip install 'resnext[{x}]'"
        for x in extras
    }
    assert str(e.value) in hints, (str(e.value), hints)
    assert not (tmp_path / "out.safetensors").exists()


METADATA_CASES = {
    "none": None,
    "empty": {},
    "ours": {"class_names": ["a", "b"], "preprocessing": PRE.to_dict(), "spec": {"d": [1, 2]}},
    "unicode": {"class_names": ["chat", "étoile", "猫"], "metrics": {"top1": 12.5}},
}


@pytest.mark.parametrize("meta", list(METADATA_CASES))
def test_save_safetensors_writes_what_safe_open_reads(tmp_path, meta):
    state = tensors(3)
    base = torch.arange(12.0).reshape(3, 4)
    # Views that share storage or are strided: safetensors' own save_file refuses these.
    state |= {"t": base.t(), "row": base[1], "shared": base, "param": torch.nn.Parameter(base)}
    path = save_safetensors(tmp_path / "sub" / "dir" / "m.bin", state, METADATA_CASES[meta])
    with safe_open(str(path), framework="pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
        stored = f.metadata() or {}
    assert_same(dict(sorted(got.items())), {k: v.detach() for k, v in sorted(state.items())})
    if METADATA_CASES[meta]:
        assert set(stored) == {"resnext"}
        assert json.loads(stored["resnext"]) == METADATA_CASES[meta]
    else:
        assert "resnext" not in stored
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.bin"]


def checkpoint_payload(pre) -> dict:
    return {
        "model": tensors(5),
        "spec": {"stem": "imagenet"},
        "model_name": "resnext50_32x4d",
        "class_names": None,  # a None value is no metadata
        "preprocessing": pre,
        "config": {"lr": 0.1},
        "metrics": {"top1": 77.5},
        "source": "torchvision:IMAGENET1K_V1",
        "epoch": 9,
        "step": 90,
        "optimizer": {"state": {}},
        "rng": torch.ByteTensor([1, 2, 3]),
    }


@pytest.mark.parametrize("pre", [PRE, PRE.to_dict(), None], ids=["object", "dict", "none"])
@pytest.mark.parametrize("drop", [(), ("spec", "metrics"), DESCRIBING])
def test_checkpoint_metadata_keeps_the_describing_keys_as_json(pre, drop):
    ckpt = {k: v for k, v in checkpoint_payload(pre).items() if k not in drop}
    before = dict(ckpt)
    want = {k: ckpt[k] for k in DESCRIBING if ckpt.get(k) is not None}
    if "preprocessing" in want:
        want["preprocessing"] = PRE.to_dict()
    got = checkpoint_metadata(ckpt)
    assert got == want and list(got) == [k for k in DESCRIBING if k in want]
    assert json.loads(json.dumps(got)) == got and ckpt == before


@pytest.mark.parametrize("pre", [PRE, PRE.to_dict()], ids=["object", "dict"])
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ""])
def test_save_model_file_writes_a_checkpoint_torch_reads_safely(tmp_path, pre, suffix):
    ckpt = checkpoint_payload(pre)
    before = dict(ckpt)
    path = save_model_file(tmp_path / "new" / f"model{suffix}", ckpt)
    assert path == tmp_path / "new" / f"model{suffix}"
    got = torch.load(path, weights_only=True)  # no Preprocessing object left to unpickle
    assert_same(got, {"format": FORMAT, **ckpt, "preprocessing": PRE.to_dict()})
    assert ckpt == before and ckpt["preprocessing"] is pre


@pytest.mark.parametrize("pre", [PRE, PRE.to_dict()], ids=["object", "dict"])
def test_save_model_file_as_safetensors_keeps_weights_and_description(tmp_path, pre):
    ckpt = checkpoint_payload(pre)
    path = save_model_file(tmp_path / "new" / "model.safetensors", ckpt)
    with safe_open(str(path), framework="pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["resnext"])
    assert_same(dict(sorted(got.items())), dict(sorted(ckpt["model"].items())))
    want = {k: ckpt[k] for k in DESCRIBING if ckpt[k] is not None} | {
        "preprocessing": PRE.to_dict()
    }
    assert meta == want  # no training state (epoch, optimizer, rng) and no Nones


# The writers, each with the function underneath that puts the bytes on disk.
WRITERS = {
    "save_checkpoint": (lambda p, s: save_checkpoint(p, {"model": s}), "last.pt"),
    "save_safetensors": (lambda p, s: save_safetensors(p, s, {"a": 1}), "m.safetensors"),
    "save_model_file-pt": (lambda p, s: save_model_file(p, {"model": s}), "best.pt"),
    "save_model_file-st": (lambda p, s: save_model_file(p, {"model": s}), "w.safetensors"),
}


def spy_on_bytes(monkeypatch, check) -> None:
    """Call `check()` inside torch.save and safetensors' save, before they write."""
    real_save, real_file = torch.save, safetensors.torch.save

    def save(*a, **k):
        check()
        return real_save(*a, **k)

    def file(*a, **k):
        check()
        return real_file(*a, **k)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(safetensors.torch, "save", file)


def read_back(path: Path) -> dict:
    ckpt = read_model_file(path)
    return ckpt["model"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
@pytest.mark.parametrize("existed", [False, True])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_writer_replaces_the_file_at_once(tmp_path, monkeypatch, writer, existed, mask):
    write, name = WRITERS[writer]
    path = tmp_path / name
    if existed:
        write(path, tensors(1))
        path.chmod(0o600 if mask != 0o077 else 0o644)
    old = path.read_bytes() if existed else None
    seen = []

    def check():
        # While the new bytes are written, the old file is whole and the new one is a hidden
        # temporary next to it (same disk, so the rename is atomic), named after the file.
        names = sorted(p.name for p in tmp_path.iterdir())
        temps = [n for n in names if n != name]
        assert len(temps) == 1 and re.fullmatch(rf"\.{re.escape(name)}\..+\.tmp", temps[0])
        assert (path.read_bytes() if path.exists() else None) == old
        seen.append(temps[0])

    spy_on_bytes(monkeypatch, check)
    old_mask = os.umask(mask)
    try:
        assert write(path, tensors(2)) == path
    finally:
        os.umask(old_mask)
    assert seen and sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # as open() would create it
    assert_same(read_back(path), tensors(2))


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("existed", [False, True])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path, monkeypatch, writer, existed, error):
    write, name = WRITERS[writer]
    path = tmp_path / name
    if existed:
        write(path, tensors(1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def check():
        raise error("interrupted")

    spy_on_bytes(monkeypatch, check)
    with pytest.raises(error, match="interrupted"):
        write(path, tensors(2))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_writer_makes_the_missing_folders(tmp_path, writer):
    write, name = WRITERS[writer]
    path = tmp_path / "runs" / "a" / "b" / name
    assert write(path, tensors(6)) == path
    assert_same(read_back(path), tensors(6))


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed\nmore"),
    ],
    ids=["ENOSPC", "torch"],
)
@pytest.mark.parametrize("existed", [False, True])
def test_a_checkpoint_that_cannot_be_written_says_why_in_one_line(
    tmp_path, monkeypatch, error, existed
):
    path = tmp_path / "last.pt"
    if existed:
        save_checkpoint(path, {"model": tensors(1)})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def check():
        raise error

    spy_on_bytes(monkeypatch, check)
    with pytest.raises(OSError) as e:
        save_checkpoint(path, {"model": tensors(2)})
    first = str(error).splitlines()[0]
    kept = "the previous file is intact" if existed else "no checkpoint last.pt yet"
    m = re.fullmatch(
        rf"cannot write checkpoint {re.escape(str(path))} \((\d+) MiB free on its disk; "
        rf"{re.escape(first)}\); {kept}",
        str(e.value),
    )
    assert m, str(e.value)
    free = shutil.disk_usage(tmp_path).free / 2**20
    assert abs(int(m[1]) - free) < 0.05 * free + 64
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def run_in_child(job) -> str:
    """Run `job()` in a forked child and return the line it gives back (kills the child's
    process at will without touching this one's state)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(r)
        # The parent's OpenMP pool did not survive the fork: a parallel torch op here would wait
        # for its threads forever (seen in the full suite). One thread runs inline.
        torch.set_num_threads(1)
        try:
            msg = job()
        except BaseException as e:
            msg = f"{type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.parametrize("existed", [False, True])
def test_a_checkpoint_over_the_file_size_limit_is_one_clear_error(tmp_path, existed):
    path = tmp_path / "last.pt"
    if existed:
        save_checkpoint(path, {"model": tensors(1)})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    payload = {"model": {"w": torch.zeros(50_000)}}  # made here: the child only writes

    def job():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        save_checkpoint(path, payload)
        return "saved"

    msg = run_in_child(job)
    kept = "the previous file is intact" if existed else "no checkpoint last.pt yet"
    m = re.fullmatch(
        rf"OSError: cannot write checkpoint {path} \((\d+) MiB free on its disk; (.+)\); {kept}",
        msg,
    )
    assert m, msg
    free = shutil.disk_usage(tmp_path).free / 2**20
    assert abs(int(m[1]) - free) < 0.05 * free + 64
    assert "\n" not in m[2] and m[2]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_killed_save_leaves_the_old_file_and_a_temporary_to_remove(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": tensors(1)})
    old = path.read_bytes()
    keep = [tmp_path / n for n in ("best.pt", ".hidden.pt", "notes.tmp", ".last.pt.tmp")]
    for p in keep:
        p.write_bytes(b"mine")

    def job():
        def torn(obj, f, *a, **k):
            f.write(b"half a checkpoint")
            f.flush()
            os._exit(9)  # killed mid-write: no handler runs

        torch.save = torn
        save_checkpoint(path, {"model": tensors(2)})
        return "saved"

    run_in_child(job)
    assert path.read_bytes() == old
    stale = sorted(set(tmp_path.iterdir()) - {path, *keep})
    assert len(stale) == 1 and stale[0].read_bytes() == b"half a checkpoint"
    assert remove_stale_temporaries(tmp_path) == stale
    assert sorted(tmp_path.iterdir()) == sorted([path, *keep])
    assert remove_stale_temporaries(tmp_path) == []


def test_remove_stale_temporaries_lists_them_in_order(tmp_path):
    names = [".last.pt.b2x.tmp", ".best.pt.a1.tmp", ".last.pt.0.tmp"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == sorted(tmp_path / n for n in names)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_reaches_the_disk_before_its_name_does(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync", st.st_ino, st.st_size))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.stat(a).st_ino, os.stat(a).st_size))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(path, {"model": tensors(4)})
    final = path.stat()
    file_event = ("fsync", final.st_ino, final.st_size)  # every byte handed over before fsync
    assert events == [file_event, ("replace", final.st_ino, final.st_size), events[2]]
    assert events[2][:2] == ("fsync-dir", tmp_path.stat().st_ino)
    assert torch.load(path, weights_only=True)["format"] == FORMAT


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027, 0o000])
def test_current_umask_reads_the_mask_and_leaves_it(monkeypatch, mask, proc):
    if not proc:  # where /proc is absent, the mask is set and restored
        real = Path.read_text

        def read_text(self, *a, **k):
            if str(self).startswith("/proc"):
                raise OSError("no /proc here")
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "read_text", read_text)
    old = os.umask(mask)
    try:
        if proc and Path("/proc/self/status").exists():
            # Where Linux tells, the mask is read, never set: a thread creating a file at that
            # moment would get the wrong mode.
            with monkeypatch.context() as m:
                m.setattr(os, "umask", lambda _: pytest.fail("os.umask called"))
                assert current_umask() == mask
        assert current_umask() == mask
        assert os.umask(mask) == mask  # unchanged
    finally:
        os.umask(old)
