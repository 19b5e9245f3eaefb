"""`resnext evaluate`, `convert`, `export` and `predict`: the commands that read model files.

Each takes any file `resnext.load_model` reads: a run's last.pt/best.pt, .safetensors, and
torchvision / timm / pycls weight files; evaluate and predict also run exported files.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import get_args

from resnext.cli.common import UserError, log_to_stderr


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Top-1 / top-5 error of a model file on a dataset's validation split."""
    from resnext.training.evaluation import evaluate_checkpoint

    for name in ("resize", "crop", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must not be negative, got {args.workers}")
    log_to_stderr(True)
    r = evaluate_checkpoint(
        args.checkpoint, args.dataset, args.data, args.resize, args.crop, args.ten_crop,
        args.batch_size, args.workers, args.split or "auto", args.trust_file,
    )  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return
    view = f"resize {r['resize']}, {'ten-crop' if r['ten_crop'] else 'crop'} {r['crop']}"
    top5 = f"top-5 error {r['top5_error']:.2f}%  " if r["top5_error"] is not None else ""
    print(f"top-1 error {r['top1_error']:.2f}%  {top5}"
          f"({r['images']} {r['split']} images, {view})")  # fmt: skip


def cmd_convert(args: argparse.Namespace) -> None:
    """Weights from torchvision, timm, pycls or resnext files to a self-describing checkpoint."""
    from resnext.files.convert import import_weights
    from resnext.files.model_file import save_model_file

    overrides = {"form": args.form} if args.form else {}
    payload = import_weights(
        args.source, args.input, args.model, args.source_name, args.key, **overrides
    )
    save_model_file(args.out, payload)
    pre = payload["preprocessing"]
    seen = (
        f"preprocessing resize {pre.get('resize')} crop {pre.get('crop')} {pre.get('interpolation')}"
        if pre
        else "no preprocessing recorded"
    )
    print(
        f"wrote {args.out}: {payload['model_name'] or 'custom spec'} "
        f"({payload['spec']['num_classes']} classes, form {payload['spec']['form']}), "
        f"{seen} (from {payload['source']['weights'] or args.source})"
    )


def cmd_export(args: argparse.Namespace) -> None:
    """Export a model file and check the result against eager PyTorch."""
    from resnext.files.export import check_suffix, export_checkpoint

    if args.tolerance is not None and not args.tolerance >= 0:
        raise UserError(f"--tolerance must not be negative, got {args.tolerance:g}")
    check_suffix(args.format, args.out)
    if args.precision == "int8":
        return _export_int8(args)
    if args.calibration or args.calibration_images:
        raise UserError("--calibration is for --precision int8")
    tolerance = 1e-4 if args.tolerance is None else args.tolerance
    dynamic, spatial = args.batch == "dynamic", args.spatial == "dynamic"
    diff = export_checkpoint(args.checkpoint, args.format, args.out, dynamic, spatial=spatial)
    # Shapes mean something for programs; a safetensors file holds weights only.
    shape = (
        "" if args.format == "safetensors" else f", {args.batch} batch, {args.spatial} height/width"
    )
    print(f"wrote {args.out} ({args.format}{shape}); max abs diff to eager {diff:.3g}")
    if not diff <= tolerance:
        raise UserError(f"export check failed: max abs diff {diff:.3g} > {tolerance:g}")


def _export_int8(args: argparse.Namespace) -> None:
    """A QDQ int8 ONNX file; --tolerance (max abs logit diff) applies only when given."""
    from resnext.inference.quantize import export_int8

    if args.format != "onnx":
        raise UserError("--precision int8 writes onnx files only (--format onnx)")
    if not args.calibration:
        raise UserError("--precision int8 needs --calibration DIR (images to calibrate on)")
    if args.batch == "static":
        raise UserError("int8 exports have a dynamic batch (drop --batch static)")
    if args.calibration_images is not None and args.calibration_images < 1:
        raise UserError(f"--calibration-images must be positive, got {args.calibration_images}")
    spatial = args.spatial == "dynamic"
    r = export_int8(args.checkpoint, args.out, args.calibration, args.calibration_images, spatial)
    if r["top1_agreement"] is None:
        judged = "no held-out images to measure top-1 agreement on (sample 4 or more)"
    else:
        judged = (f"on {r['held_out']} held-out images top-1 agrees with eager fp32 on "
                  f"{r['top1_agreement']:.2f}%")  # fmt: skip
    print(f"wrote {args.out} (onnx int8 QDQ, dynamic batch, {args.spatial} height/width), "
          f"calibrated on {r['images']} images; {judged}, "
          f"max abs logit diff {r['max_abs_diff']:.3g}")  # fmt: skip
    if args.tolerance is not None and not r["max_abs_diff"] <= args.tolerance:
        diff = r["max_abs_diff"]
        raise UserError(f"export check failed: max abs diff {diff:.3g} > {args.tolerance:g}")


def cmd_predict(args: argparse.Namespace) -> None:
    """Top-k classes for images and folders of images."""
    from resnext.inference.predict import predict_file

    read = 0
    for result in predict_file(args.checkpoint, args.images, args.top_k, args.trust_file):
        if args.json:
            print(json.dumps(result), flush=True)
        elif "error" in result:
            print(f"resnext: cannot read {result['path']}: {result['error']}", file=sys.stderr)
        else:
            top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in result["top"])
            print(f"{result['path']}: {top}", flush=True)
        read += "error" not in result
    if read == 0:
        raise UserError("no image could be read")


MODEL_FILE_HELP = (
    "last.pt/best.pt, .safetensors, a torchvision/timm/pycls weights file, an http(s):// or "
    "file:// URL, torchvision:MODEL[.TAG] or timm:NAME.TAG; evaluate and predict also run "
    "the .onnx, TorchScript and .pt2 files `export` wrote (TorchScript and .pt2 with --trust-file)"
)
TRUST_HELP = (
    "run a TorchScript or .pt2 file: they are programs, and loading one can run any code it "
    "holds; only for files from a source you trust (weight files never run code)"
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """evaluate, convert, export, predict."""
    from resnext.files.convert import SOURCES
    from resnext.files.export import FORMATS
    from resnext.models.blocks import Form
    from resnext.training.config import Dataset

    p = sub.add_parser("evaluate", help="top-1 / top-5 error of a model file")
    p.add_argument("--checkpoint", required=True, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    p.add_argument("--dataset", required=True, choices=get_args(Dataset))
    p.add_argument("--data", default="", help="dataset path")
    p.add_argument("--split", choices=["val", "test"],
                   help="held-out split (default: a folder's val/ if present, else test/)")  # fmt: skip
    p.add_argument("--resize", type=int, help="shorter side before cropping")
    p.add_argument("--crop", type=int, help="centre crop (e.g. 224, or 320 as in Table 5)")
    p.add_argument("--ten-crop", action="store_true", help="4 corners + centre, and mirrors")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, help="decoding processes for image folders "
                   "(default: 4, or the CPUs if fewer)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--trust-file", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("convert", help="import torchvision/timm/pycls weights as a checkpoint")
    p.add_argument("input", metavar="IN", help=".pt/.pth/.safetensors file")
    p.add_argument("--from", dest="source", required=True,
                   choices=SOURCES)  # fmt: skip
    p.add_argument("--out", required=True, help=".pt checkpoint or .safetensors")
    p.add_argument("--model", default=None, help="registered name (default: from the shapes)")
    p.add_argument("--source-name", default=None,
                   help="the source's model name for its preprocessing, e.g. timm's "
                   "resnext50_32x4d.a1h_in1k")  # fmt: skip
    p.add_argument("--key", default=None, help="wrapper entry holding the weights (model_ema)")
    p.add_argument("--form", choices=get_args(Form), default=None, help="block form to store")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="ONNX / TorchScript / ExportedProgram / safetensors")
    p.add_argument("--checkpoint", required=True, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    p.add_argument("--format", required=True,
                   choices=FORMATS)  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--batch", choices=("dynamic", "static"), default="dynamic")
    p.add_argument("--spatial", choices=("dynamic", "static"), default="dynamic",
                   help="height and width (ONNX, exported-program); default dynamic")  # fmt: skip
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max abs diff allowed (default 1e-4; int8: not checked unless given)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8: a QDQ ONNX file (post-training static quantization)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="int8: images, or class folders of images, to calibrate on",
    )
    p.add_argument("--calibration-images", type=int, metavar="N",
                   help="int8: how many to sample (spread over the classes; default 256): "
                        "a quarter is held out to judge the file")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-k classes of images with a model file")
    p.add_argument("--checkpoint", required=True, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--trust-file", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_predict)
