"""int8 (QDQ ONNX export, optimize_for_inference) and exported files run by evaluate/predict.

A tiny CIFAR-template model is trained for a few seconds on coloured images it can learn, so
that int8 is checked on a model with real decisions. The references: eager fp32 PyTorch (top-1
agreement, error), onnxruntime called directly, OpenVINO, and docs/onnx_client.py (Pillow
preprocessing) against `predict`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnext import ModelSpec, build_model, optimize_for_inference
from resnext.cli import main
from resnext.data.calibration import calibration_batches
from resnext.data.images import decode_image
from resnext.data.preprocessing import Preprocessing
from resnext.files.checkpoint import save_checkpoint
from resnext.files.loader import load_model

CLASSES = ["blue", "green", "grey", "red"]
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "grey": (128,) * 3}
PRE = {"resize": 18, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
SPEC = {
    "template": "cifar",
    "depths": (1, 1, 1),
    "cardinality": 2,
    "base_width": 4,
    "base_planes": 16,
}
CLIENT = Path(__file__).parents[1] / "docs" / "onnx_client.py"


def write_images(root: Path, per_class: int, seed: int) -> None:
    """Noisy images of each class's colour, of varied sizes (so resizing happens)."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(19, 40, 2)
            pixels = np.array(COLOURS[c]) + rng.normal(0, 45, (h, w, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / c / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, data root with train/ and test/ class folders, fp32 model)."""
    root = tmp_path_factory.mktemp("int8")
    write_images(root / "data" / "train", 24, seed=0)
    write_images(root / "data" / "test", 12, seed=1)
    torch.manual_seed(0)
    model = build_model(ModelSpec(**SPEC, num_classes=len(CLASSES)))
    pre = Preprocessing.from_dict(PRE, 3)
    x = torch.cat(calibration_batches(root / "data" / "train", pre, 96))
    y = torch.tensor([i for i in range(len(CLASSES)) for _ in range(24)])
    # calibration_batches' class-balanced order for the whole set is by class, as y
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 30x faster than 2 threads on a loaded 2-core machine (3 s)
    try:
        for step in range(40):
            idx = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "preprocessing": PRE}
    ckpt = save_checkpoint(root / "model.pt", payload | {"class_names": CLASSES})
    return str(ckpt), root / "data", model


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def export_int8(capsys, ckpt, out, data, *extra):
    code, text, err = run(
        capsys, "export", "--checkpoint", ckpt, "--format", "onnx", "--out", out,
        "--precision", "int8", "--calibration", data / "train", "--calibration-images", 48, *extra,
    )  # fmt: skip
    assert code == 0, err
    return text


def evaluate(capsys, model_file, data, *extra) -> dict:
    code, out, err = run(
        capsys, "evaluate", "--checkpoint", model_file, "--dataset", "folder", "--data", data,
        "--split", "test", "--workers", 0, "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def predict(capsys, model_file, images, *extra) -> list[dict]:
    code, out, err = run(capsys, "predict", "--checkpoint", model_file, *images, "--json", *extra)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_int8_export_is_evaluated_as_deployed(trained, tmp_path, capsys):
    ckpt, data, model = trained
    out = tmp_path / "model_int8.onnx"
    text = export_int8(capsys, ckpt, out, data)
    assert "calibrated on 36 images; on 12 held-out images top-1 agrees" in text
    fp32, int8 = evaluate(capsys, ckpt, data), evaluate(capsys, out, data)
    assert fp32["images"] == int8["images"] == 48
    assert fp32["top1_error"] <= 25  # the model learned the colours
    assert abs(int8["top1_error"] - fp32["top1_error"]) <= 100 / 48 * 2 + 1e-9  # <= 2 images
    # independently: onnxruntime on the file itself, on the same preprocessed images
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(out))
    assert {n.op_type for n in proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["class_names"] == CLASSES
    assert meta["preprocessing"]["resize"] == 18 and "EXIF" in meta["input"]
    assert meta["quantization"]["calibration_images"] == 36  # the other 12 held out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pre = Preprocessing.from_dict(PRE, 3).transform()
    paths = sorted((data / "test").rglob("*.png"))
    x = torch.stack([pre(decode_image(p, 3)) for p in paths]).numpy()
    hits = session.run(None, {"x": x})[0].argmax(1) == [CLASSES.index(p.parent.name) for p in paths]
    assert int8["top1_error"] == pytest.approx(100 * (1 - hits.mean()))


def test_exported_files_predict_the_checkpoints_classes(trained, tmp_path, capsys):
    ckpt, data, _ = trained
    images = [data / "test"]
    want = predict(capsys, ckpt, images)
    assert run(capsys, "export", "--checkpoint", ckpt, "--format", "onnx", "--out",
               tmp_path / "m.onnx")[0] == 0  # fmt: skip
    for fmt, name in [("onnx", "m.onnx"), ("torchscript", "m.ts"), ("exported-program", "m.pt2")]:
        out = tmp_path / name
        if fmt != "onnx":
            assert (
                run(capsys, "export", "--checkpoint", ckpt, "--format", fmt, "--out", out)[0] == 0
            )
        trust = () if fmt == "onnx" else ("--trust-file",)  # programs run only when trusted
        got = predict(capsys, out, images, *trust)
        assert [g["path"] for g in got] == [w["path"] for w in want]
        for g, w in zip(got, want):
            assert [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]], fmt
            assert abs(g["top"][0]["prob"] - w["top"][0]["prob"]) < 1e-4, fmt
        result = evaluate(capsys, out, data, *trust)
        assert result["top1_error"] == evaluate(capsys, ckpt, data)["top1_error"], fmt


def test_files_that_are_no_model_stay_one_line(trained, tmp_path, capsys):
    ckpt, data, _ = trained
    image = next((data / "test").rglob("*.png"))
    assert run(capsys, "export", "--checkpoint", ckpt, "--format", "torchscript", "--out",
               tmp_path / "good.ts")[0] == 0  # fmt: skip
    assert run(capsys, "export", "--checkpoint", ckpt, "--format", "exported-program", "--out",
               tmp_path / "good.pt2")[0] == 0  # fmt: skip
    bad = {
        "junk.onnx": b"this is not a protobuf at all",
        "half.ts": (tmp_path / "good.ts").read_bytes()[:3000],
        "half.pt2": (tmp_path / "good.pt2").read_bytes()[:3000],
        "notes.pt": b"plain text",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        for cmd in (["predict", "--checkpoint", tmp_path / name, image],
                    ["evaluate", "--checkpoint", tmp_path / name, "--dataset", "folder",
                     "--data", data, "--split", "test"]):  # fmt: skip
            code, out, err = run(capsys, *cmd)
            assert code == 2 and err.count("\n") == 1 and name in err, (name, err)
    # an exported file is not weights: convert says so in one line
    code, _, err = run(capsys, "convert", tmp_path / "good.ts", "--from", "resnext", "--out",
                       tmp_path / "c.pt")  # fmt: skip
    assert code == 2 and "exported torchscript file" in err and err.count("\n") == 1


def test_int8_export_needs_calibration_and_onnx(trained, tmp_path, capsys):
    ckpt, data, _ = trained
    base = ["export", "--checkpoint", ckpt, "--precision", "int8"]
    for extra, words in [
        (["--format", "onnx", "--out", tmp_path / "a.onnx"], "--calibration"),
        (["--format", "torchscript", "--out", tmp_path / "a.ts", "--calibration", data],
         "onnx"),
        (["--format", "onnx", "--out", tmp_path / "a.onnx", "--calibration", tmp_path / "none"],
         "does not exist"),
    ]:  # fmt: skip
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and words in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("a.*"))


def test_one_calibration_image_leaves_no_held_out_images_to_judge(trained, tmp_path, capsys):
    """The agreement is measured on images the ranges were not fitted to: with one image there
    are none, and the report says so instead of a perfect score."""
    ckpt, data, _ = trained
    code, text, err = run(
        capsys, "export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx",
        "--precision", "int8", "--calibration", data / "train", "--calibration-images", 1,
    )  # fmt: skip
    assert code == 0, err
    assert "calibrated on 1 images; no held-out images" in text and "%" not in text


def test_low_int8_agreement_on_held_out_images_warns(tmp_path, caplog):
    from resnext.inference.quantize import LOW_AGREEMENT, export_int8

    from conftest import randomize_bn

    write_images(tmp_path / "train", 8, seed=0)
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec(**SPEC, num_classes=len(CLASSES))))
    with torch.no_grad():  # four nearly equal rows: the classes differ by less than int8's step
        model.fc.weight.copy_(model.fc.weight[:1] + 1e-4 * torch.randn_like(model.fc.weight))
        model.fc.bias.zero_()
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "preprocessing": PRE}
    ckpt = save_checkpoint(tmp_path / "m.pt", payload)
    r = export_int8(ckpt, tmp_path / "m.onnx", tmp_path / "train", 32)
    assert (r["images"], r["held_out"]) == (24, 8) and r["top1_agreement"] < LOW_AGREEMENT
    warned = [m for m in caplog.messages if "held-out calibration images" in m]
    assert len(warned) == 1 and f"{r['top1_agreement']:.2f}%" in warned[0]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_onnx_client_matches_predict(trained, tmp_path, capsys, interpolation):
    """docs/onnx_client.py (Pillow, numpy, onnxruntime only) against `predict` on one file.

    Pillow's antialiased bilinear resize and ours (torchvision's, in float, rounded) differ by
    at most 1 grey level per pixel; bicubic by at most 8 (0.2 on average); nearest is exact
    (torch's rule, which the client computes itself: Pillow samples pixel centres)."""
    ckpt, data, model = trained
    pre = dict(PRE, interpolation=interpolation)
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "preprocessing": pre}
    path = save_checkpoint(tmp_path / "m.pt", payload | {"class_names": CLASSES})
    out = tmp_path / "m.onnx"
    assert run(capsys, "export", "--checkpoint", path, "--format", "onnx", "--out", out)[0] == 0
    spec = importlib.util.spec_from_file_location("onnx_client", CLIENT)
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    images = sorted((data / "test").rglob("*.png"))[::3]
    ours = Preprocessing.from_dict(pre, 3).transform()
    recorded = Preprocessing.from_dict(pre, 3).to_dict()  # as the file's metadata holds it
    levels = []
    for p in images:  # the pixels, in grey levels
        diff = client.preprocess(str(p), recorded)[0] - ours(decode_image(p, 3)).numpy()
        levels.append(np.abs(diff * 0.25 * 255))
    worst = {"bilinear": 1, "bicubic": 8, "nearest": 0}[interpolation]
    assert max(v.max() for v in levels) <= worst + 1e-3
    assert np.mean([v.mean() for v in levels]) <= 0.3
    client.main(str(out), [str(p) for p in images])
    lines = capsys.readouterr().out.splitlines()
    want = predict(capsys, out, images)
    for line, w in zip(lines, want, strict=True):
        name, prob = line.rsplit(" ", 2)[1:]
        assert name == w["top"][0]["class"]
        assert abs(float(prob) - w["top"][0]["prob"]) <= 0.02


def test_optimize_for_inference_int8(trained):
    ckpt, data, model = trained
    pre = Preprocessing.from_dict(PRE, 3)
    calibration = calibration_batches(data / "train", pre, 48)
    x = torch.cat(calibration_batches(data / "test", pre, 48))
    with pytest.raises(ValueError, match="calibration"):
        optimize_for_inference(model, "int8")
    with torch.no_grad():
        want = model(x)
    for backend in ["onnxruntime", "torch"]:
        fast = optimize_for_inference(model, "int8", backend=backend, calibration=calibration)
        got = fast(x)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.95, backend


@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (pip install 'resnext[openvino]')",
)
def test_openvino_runs_the_int8_file_like_onnxruntime(trained, tmp_path, capsys):
    import openvino as ov

    ckpt, data, model = trained
    out = tmp_path / "m.onnx"
    export_int8(capsys, ckpt, out, data)
    x = torch.cat(calibration_batches(data / "test", Preprocessing.from_dict(PRE, 3), 48))
    compiled = ov.Core().compile_model(str(out), "CPU")
    by_ov = torch.from_numpy(np.asarray(compiled(x.numpy())[0]))
    by_ort = load_model(out)(x)
    assert (by_ov.argmax(1) == by_ort.argmax(1)).float().mean() >= 0.95
    fast = optimize_for_inference(model, "int8", calibration=[x[:24]])  # auto: OpenVINO
    assert fast.runtime == "openvino"
    assert (fast(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.95


@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or not sys.platform.startswith("linux"),
    reason="openvino is not installed (pip install 'resnext[openvino]'), or not Linux",
)
def test_openvino_leaves_the_signal_stack_it_found(tmp_path):
    """OpenVINO's CPU plugin repoints the compiling thread's alternate signal stack at its own
    memory; once that is freed, the next handled signal kills the process with SIGSEGV. Read
    from the kernel (sigaltstack) in a child process, around two compiles and their deletion."""
    script = f"""
import ctypes, faulthandler, gc, os, signal, torch
from resnext.files.runtimes import OnnxModel
class S(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]
libc = ctypes.CDLL(None)
def now():
    s = S(); libc.sigaltstack(None, ctypes.byref(s)); return (s.sp, s.flags, s.size)
faulthandler.enable()
before = now()
torch.onnx.export(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), {str(tmp_path / "m.onnx")!r},
                  dynamo=False, dynamic_axes={{"input": {{0: "n"}}}}, input_names=["input"])
m = OnnxModel({str(tmp_path / "m.onnx")!r}, "openvino")
m(torch.randn(1, 3, 8, 8)); m(torch.randn(2, 3, 8, 8))
assert now() == before, (now(), before)
del m; gc.collect()
assert now() == before, (now(), before)
signal.signal(signal.SIGUSR1, lambda *a: None)
os.kill(os.getpid(), signal.SIGUSR1)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
