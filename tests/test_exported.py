"""Code planted in any model file never runs: programs (TorchScript, .pt2) load only when trusted.

Each plant is a pickle whose unpickling writes a marker file, put where a format's reader would
unpickle it: torch.save's zip and legacy files, a plain pickle, every pickled member of a .pt2
(sample inputs, weights, constants, opaque objects) and of a TorchScript archive, safetensors
metadata. A .pt2 also runs Python from its graph (sympy parses the shape expressions with
`eval`), with no pickle at all: a program is refused as a whole, not member by member.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnext import ModelSpec, Preprocessing, build_model, load_model
from resnext.cli import main
from resnext.files.checkpoint import CheckpointError, save_checkpoint
from resnext.files.export import export_checkpoint

from conftest import one_line_error, randomize_bn

SPEC = ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 3, base_planes=16)
PRE = Preprocessing(8, 8, mean=(0.5,) * 3, std=(0.25,) * 3)
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
PROGRAMS = {"torchscript": ".ts", "exported-program": ".pt2"}


class Planted:
    """Unpickling this runs `exec`, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint and the TorchScript and .pt2 files `resnext export` wrote from it."""
    tmp = tmp_path_factory.mktemp("exports")
    model = randomize_bn(build_model(SPEC))
    payload = {"model": model.state_dict(), "spec": SPEC.to_dict(), "preprocessing": PRE.to_dict()}
    files = {"checkpoint": save_checkpoint(tmp / "model.pt", payload)}
    for fmt, suffix in PROGRAMS.items():
        files[fmt] = tmp / f"model{suffix}"
        assert export_checkpoint(files["checkpoint"], fmt, files[fmt]) == 0.0
    return files


def rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """A copy of the zip `src` whose members `change(name without its folder, data)` replaces
    (None keeps a member as it is)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            new = change(info.filename.split("/", 1)[1], data)
            out.writestr(info, data if new is None else new)
    return dst


def torch_bytes(obj, legacy: bool = False) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def pickled_config(data: bytes, name: str, entry: dict) -> bytes:
    """A .pt2 payload config that marks `name` as a pickle."""
    config = json.loads(data)
    config["config"][name] = entry
    return json.dumps(config).encode()


def first_weight(config: bytes) -> str:
    """The name of the weight stored in weight_0."""
    entries = json.loads(config)["config"].items()
    return next(k for k, v in entries if v["path_name"] == "weight_0")


def plant_pt2_member(exports, dst: Path, marker: Path, member: str) -> Path:
    """Our .pt2 with the payload in one pickled member, marked as pickled where torch asks."""
    payload = torch_bytes(Planted(marker))
    weight = {"path_name": "weight_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    targets = {
        "sample_inputs": {"data/sample_inputs/model.pt": lambda d: payload},
        "weights": {
            "data/weights/weight_0": lambda d: payload,
            "data/weights/model_weights_config.json": lambda d: pickled_config(
                d, first_weight(d), weight
            ),
        },
        "constants": {
            "data/constants/model_constants_config.json": lambda d: pickled_config(
                d, "planted", weight | {"path_name": "tensor_0"}
            ),
        },
        "opaque": {
            "data/constants/model_constants_config.json": lambda d: pickled_config(
                d, "planted", weight | {"path_name": "opaque_obj_0"}
            ),
        },
    }[member]
    extra = {"constants": "tensor_0", "opaque": "opaque_obj_0"}.get(member)
    out = rewrite(exports["exported-program"], dst, lambda n, d: targets.get(n, lambda d: None)(d))
    if extra:  # a new member the config points at
        with zipfile.ZipFile(out, "a") as z:
            folder = z.namelist()[0].split("/", 1)[0]
            data = payload if member == "constants" else pickle.dumps(Planted(marker))
            z.writestr(f"{folder}/data/constants/{extra}", data)
    return out


def plant_sympy(exports, dst: Path, marker: Path) -> Path:
    """Our .pt2 with Python in a shape expression of its graph (no pickle anywhere)."""
    code = f"exec(\"open({str(marker)!r}, 'w').close()\") or ".encode()

    def change(name: str, data: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        return data.replace(b'"expr_str": "', b'"expr_str": "' + code.replace(b'"', b'\\"'), 1)

    return rewrite(exports["exported-program"], dst, change)


def plant_torchscript(exports, dst: Path, marker: Path, member: str) -> Path:
    payload = pickle.dumps(Planted(marker), protocol=2)
    return rewrite(exports["torchscript"], dst, lambda n, d: payload if n == member else None)


# name -> (writer(exports, path, marker), is the format a program)
PLANTS = {
    "torch-zip": (lambda e, p, m: p.write_bytes(torch_bytes({"model": Planted(m)})), False),
    "torch-legacy": (
        lambda e, p, m: p.write_bytes(torch_bytes({"model": Planted(m)}, legacy=True)),
        False,
    ),
    "pickle": (lambda e, p, m: p.write_bytes(pickle.dumps({"model": Planted(m)}, 2)), False),
    "safetensors-metadata": (
        lambda e, p, m: save_file(
            {"w": torch.zeros(1)}, str(p), {"resnext": pickle.dumps(Planted(m)).decode("latin-1")}
        ),
        False,
    ),
    **{
        f"pt2-{member}": (lambda e, p, m, member=member: plant_pt2_member(e, p, m, member), True)
        for member in ("sample_inputs", "weights", "constants", "opaque")
    },
    "pt2-sympy": (plant_sympy, True),
    **{
        f"torchscript-{member}": (
            lambda e, p, m, member=member: plant_torchscript(e, p, m, member),
            True,
        )
        for member in ("data.pkl", "constants.pkl")
    },
}


def refusal(path: Path, **kw) -> str:
    return one_line_error(load_model, path, **kw)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pt2", ".ts", ".safetensors"])
@pytest.mark.parametrize("plant", list(PLANTS))
def test_code_planted_in_any_format_never_runs(exports, tmp_path, plant, suffix):
    """The rule: load_model refuses in one line naming the file, and the marker never appears;
    a program names the opt-in that loads it, trusting a weights file changes nothing."""
    write, program = PLANTS[plant]
    marker, path = tmp_path / "pwned", tmp_path / f"best{suffix}"
    write(exports, path, marker)
    msg = refusal(path)
    if program:
        assert "--trust-file" in msg and "trusted=True" in msg, msg
    else:
        assert refusal(path, trusted=True) == msg
    assert not marker.exists()


@pytest.mark.parametrize(
    "plant", ["pt2-sample_inputs", "pt2-weights", "pt2-constants", "pt2-sympy"]
)
def test_the_pt2_plants_are_live_in_torchs_own_reader(exports, tmp_path, plant):
    """What the refusal prevents: torch.export.load runs each payload (a .pt2 cannot be proven
    safe by reading its pickles: the graph's expressions run too)."""
    marker = tmp_path / "pwned"
    path = PLANTS[plant][0](exports, tmp_path / "best.pt", marker)
    try:
        torch.export.load(str(path))
    except Exception:  # a payload that ran may still leave torch with no tensor
        pass
    assert marker.exists()


@pytest.mark.parametrize("fmt", list(PROGRAMS))
def test_our_own_export_loads_when_trusted(exports, fmt):
    msg = refusal(exports[fmt])
    assert msg == (
        f"refusing to load {exports[fmt]}: a {fmt} file is a program that can run code when "
        "loaded; load it only from a source you trust, with --trust-file (trusted=True)"
    )
    model = load_model(exports[fmt], trusted=True)
    with torch.no_grad():
        assert torch.equal(model(X), load_model(exports["checkpoint"])(X))
    assert model.preprocessing == PRE


def test_the_cli_refuses_a_planted_file_in_one_line_and_runs_a_trusted_one(
    exports, tmp_path, capsys
):
    marker, image = tmp_path / "pwned", tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (12, 10), (200, 30, 30)).save(image)
    planted = PLANTS["pt2-sample_inputs"][0](exports, tmp_path / "best.pt", marker)
    argv = ["predict", "--checkpoint", str(planted), str(image)]
    exe = Path(sys.executable).parent / "resnext"
    done = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(planted) in done.stderr and "--trust-file" in done.stderr
    assert not marker.exists()
    for fmt in PROGRAMS:
        evaluate = ["evaluate", "--checkpoint", str(exports[fmt]), "--dataset", "digits"]
        assert main(evaluate) == 2 and "--trust-file" in capsys.readouterr().err
        assert main(["predict", "--checkpoint", str(exports[fmt]), str(image), "--trust-file"]) == 0
        assert capsys.readouterr().out.startswith(f"{image}: ")


@pytest.mark.parametrize("plant", ["pt2-sample_inputs", "pt2-sympy"])
def test_commands_that_take_weights_refuse_a_program_unread(exports, tmp_path, capsys, plant):
    """export, convert and --init (create_model's weights) never read a program, trusted or
    not: they need weights."""
    from resnext import create_model

    marker = tmp_path / "pwned"
    path = PLANTS[plant][0](exports, tmp_path / "best.pt", marker)
    for argv in (
        [
            "export",
            "--checkpoint",
            str(path),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ],
        ["convert", str(path), "--from", "resnext", "--out", str(tmp_path / "c.pt")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path} is an exported exported-program file" in err, err
    with pytest.raises(CheckpointError, match="takes no model options"):
        create_model("resnext11_4x16d", weights=path)
    assert not marker.exists()
