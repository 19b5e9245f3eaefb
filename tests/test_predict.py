"""predict: the checkpoint's preprocessing, top-k names, folders, unreadable files."""

from __future__ import annotations

import json

import torch
from PIL import Image

from resnext import ModelSpec, build_model
from resnext.cli import main
from resnext.data.images import decode_image
from resnext.data.preprocessing import Preprocessing
from resnext.files.checkpoint import save_checkpoint
from resnext.inference.predict import predict_images

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Written as files made before Preprocessing had `channels` were: channels come from the spec.
PRE = {"resize": 36, "crop": 32, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
PRE["interpolation"] = "bicubic"


def setup(tmp_path):
    model = build_model(ModelSpec("cifar", "bottleneck", (1, 1, 1), 2, 4, 10)).eval()
    payload = {"model": model.state_dict(), "spec": model.spec.to_dict(), "class_names": CLASSES}
    ckpt = save_checkpoint(tmp_path / "model.pt", payload | {"preprocessing": PRE})
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/d.jpg", "e.png"]):
        pixels = torch.randint(0, 256, (40 + i, 48, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return model, str(ckpt), folder


def test_predict_json_over_a_folder_with_a_broken_file(tmp_path, capsys):
    model, ckpt, folder = setup(tmp_path)
    assert main(["predict", "--checkpoint", ckpt, str(folder), "--top-k", "3", "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(results) == 6
    errors = [r for r in results if "error" in r]
    assert [r["path"].endswith("broken.jpg") for r in errors] == [True]
    for r in results:
        if "top" in r:
            probs = [t["prob"] for t in r["top"]]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
            assert all(t["class"] == CLASSES[t["index"]] for t in r["top"])
    # the checkpoint's own preprocessing was applied
    a = next(r for r in results if r["path"].endswith("a.png"))
    x = Preprocessing.from_dict(PRE, 3).transform()(decode_image(folder / "a.png", 3))[None]
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    assert abs(probs[a["top"][0]["index"]].item() - a["top"][0]["prob"]) < 1e-5


def test_predict_text_output_and_batches_agree(tmp_path, capsys):
    model, ckpt, folder = setup(tmp_path)
    files = [str(folder / "a.png"), str(folder / "missing.png"), str(folder / "sub")]
    assert main(["predict", "--checkpoint", ckpt, *files]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and all(any(c in line for c in CLASSES) for line in lines)
    assert "cannot read" in err and "missing.png" in err
    pre = Preprocessing.from_dict(PRE, 3)
    one = list(predict_images(model, pre, [folder], CLASSES, batch_size=100))
    two = list(predict_images(model, pre, [folder], CLASSES, batch_size=2))
    for r1, r2 in zip(one, two):
        assert r1["path"] == r2["path"]
        if "top" in r1:
            assert abs(r1["top"][0]["prob"] - r2["top"][0]["prob"]) < 1e-5


def test_predict_errors_are_one_line(tmp_path, capsys):
    _, ckpt, folder = setup(tmp_path)
    assert main(["predict", "--checkpoint", ckpt, str(folder / "broken.jpg")]) == 2
    assert "no image could be read" in capsys.readouterr().err
    bare = save_checkpoint(tmp_path / "bare.pt", {"model": {}, "spec": None})
    assert main(["predict", "--checkpoint", str(bare), str(folder)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
