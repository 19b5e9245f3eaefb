"""Classify images with a `resnext export` ONNX file, using only onnxruntime, numpy and Pillow.

python docs/onnx_client.py model_int8.onnx photo.jpg ...   # prints "path: class prob"
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}  # antialiased by PIL


def preprocess(path: str, pre: dict) -> np.ndarray:
    """The file's "input" contract: EXIF, RGB/L, shorter side, centre crop, [0, 1], mean/std."""
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB" if pre["channels"] == 3 else "L")
    (w, h), s, c = im.size, pre["resize"], pre["crop"]
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    if min(w, h) != s and pre["interpolation"] == "nearest":  # torch's nearest, not PIL's
        rows, cols = (np.floor(np.arange(n, dtype=np.float32) * np.float32(m / n)).astype(int)
                      for n, m in ((size[1], h), (size[0], w)))  # fmt: skip
        im = Image.fromarray(np.asarray(im)[rows][:, cols])
    elif min(w, h) != s:
        im = im.resize(size, RESAMPLE[pre["interpolation"]])
    top, left = round((im.size[1] - c) / 2), round((im.size[0] - c) / 2)
    x = np.asarray(im.crop((left, top, left + c, top + c)), np.float32).reshape(c, c, -1) / 255
    x = (x - np.float32(pre["mean"])) / np.float32(pre["std"])
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def main(model: str, images: list[str]) -> None:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    pre, classes = meta["preprocessing"], meta.get("class_names")
    for path in images:
        logits = session.run(None, {"x": preprocess(path, pre)})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        print(f"{path}: {classes[p.argmax()] if classes else p.argmax()} {p.max():.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
