"""The `resnext` command: thin orchestration of the library. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

import torch

from resnext.complexity import count_complexity
from resnext.design import block_macs, design_width
from resnext.model import build_model
from resnext.zoo import _TEMPLATES, ModelSpec, get_spec, list_models


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors printed as one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def default_input_size(spec: ModelSpec) -> int:
    """224 for the ImageNet template, 32 for CIFAR."""
    return 224 if spec.template == "imagenet" else 32


def _meta_complexity(spec: ModelSpec, size: int) -> dict:
    with torch.device("meta"):
        model = build_model(spec)
    return count_complexity(model, (spec.in_channels, size, size)).to_dict()


def cmd_info(args: argparse.Namespace) -> None:
    """Params, MACs and activations of named models (all of them without a name)."""
    rows = []
    for name in args.names or list_models():
        spec = get_spec(name)
        size = args.input_size or default_input_size(spec)
        rows.append({"name": name, "input_size": size} | _meta_complexity(spec, size))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print("| model | input | params | MACs (G) | activations (M) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['name']} | {r['input_size']} | {r['params']:,} | {r['macs'] / 1e9:.2f} "
            f"| {r['activations'] / 1e6:.1f} |"
        )
    if len(rows) == 1:
        print("\n| part | params | MACs (M) | activations (K) |\n| --- | ---: | ---: | ---: |")
        for part, s in rows[0]["stages"].items():
            print(
                f"| {part} | {s['params']:,} | {s['macs'] / 1e6:.1f} | {s['activations'] / 1e3:.0f} |"
            )


def cmd_design(args: argparse.Namespace) -> None:
    """Table 2: the width d that keeps the complexity of the C=1 template for a given C."""
    if args.depth not in _TEMPLATES or _TEMPLATES[args.depth][1] != "bottleneck":
        depths = sorted(k for k, v in _TEMPLATES.items() if v[1] == "bottleneck")
        raise UserError(f"--depth must be one of {depths} (bottleneck templates), got {args.depth}")
    if args.cardinality < 1:
        raise UserError(f"--cardinality must be positive, got {args.cardinality}")
    d = design_width(args.cardinality, args.baseline_width)
    template, block, depths = _TEMPLATES[args.depth]
    spec = ModelSpec(template, block, depths, args.cardinality, d)
    base = ModelSpec(template, block, depths, 1, args.baseline_width)
    size = default_input_size(spec)
    full, ref = _meta_complexity(spec, size), _meta_complexity(base, size)
    result = {
        "depth": args.depth,
        "cardinality": args.cardinality,
        "d": d,
        "group_width": args.cardinality * d,
        "block_macs": block_macs(args.cardinality, d),
        "baseline_block_macs": block_macs(1, args.baseline_width),
        "params": full["params"],
        "macs": full["macs"],
        "baseline_params": ref["params"],
        "baseline_macs": ref["macs"],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"depth {args.depth}, C={args.cardinality}: d={d} (width of group conv {result['group_width']}); "
        f"block {result['block_macs'] / 1e6:.1f}M MACs vs {result['baseline_block_macs'] / 1e6:.1f}M "
        f"for 1x{args.baseline_width}d; model {full['params'] / 1e6:.1f}M params, "
        f"{full['macs'] / 1e9:.2f}G MACs vs {ref['params'] / 1e6:.1f}M, {ref['macs'] / 1e9:.2f}G"
    )


def cmd_convert(args: argparse.Namespace) -> None:
    """Weights from torchvision, timm, pycls or resnext files to a self-describing checkpoint."""
    from resnext.convert import import_weights
    from resnext.weights import save_weights_file

    overrides = {"form": args.form} if args.form else {}
    payload = import_weights(
        args.source, args.input, args.model, args.source_name, args.key, **overrides
    )
    save_weights_file(args.out, payload)
    pre = payload["preprocessing"] or {}
    print(
        f"wrote {args.out}: {payload['model_name'] or 'custom spec'} "
        f"({payload['spec']['num_classes']} classes, form {payload['spec']['form']}), "
        f"preprocessing resize {pre.get('resize')} crop {pre.get('crop')} "
        f"{pre.get('interpolation')} (from {payload['source']['weights'] or args.source})"
    )


def cmd_export(args: argparse.Namespace) -> None:
    """Export a checkpoint and check the file against eager PyTorch."""
    from resnext.export import export_checkpoint

    diff = export_checkpoint(args.checkpoint, args.format, args.out, args.batch == "dynamic")
    print(f"wrote {args.out} ({args.format}, {args.batch} batch); max abs diff to eager {diff:.3g}")
    if not diff <= args.tolerance:
        raise UserError(f"export check failed: max abs diff {diff:.3g} > {args.tolerance:g}")


def cmd_predict(args: argparse.Namespace) -> None:
    """Top-k classes for images and folders of images."""
    from resnext.predict import predict_checkpoint

    read = 0
    for result in predict_checkpoint(args.checkpoint, args.images, args.top_k):
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


def build_parser() -> Parser:
    parser = Parser(prog="resnext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("info", help="params / MACs / activations of named models")
    p.add_argument("names", nargs="*", metavar="NAME", help="models (default: all)")
    p.add_argument("--input-size", type=int, default=None, help="square input side")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("design", help="complexity-preserving width d for a cardinality (Table 2)")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--cardinality", type=int, required=True)
    p.add_argument("--baseline-width", type=int, default=64, help="d of the C=1 baseline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_design)
    p = sub.add_parser("convert", help="import torchvision/timm/pycls weights as a checkpoint")
    p.add_argument("input", metavar="IN", help=".pt/.pth/.safetensors file")
    p.add_argument("--from", dest="source", required=True,
                   choices=("torchvision", "timm", "pycls", "resnext"))  # fmt: skip
    p.add_argument("--out", required=True, help=".pt checkpoint or .safetensors")
    p.add_argument("--model", default=None, help="registered name (default: from the shapes)")
    p.add_argument("--source-name", default=None,
                   help="the source's model name for its preprocessing, e.g. timm's "
                   "resnext50_32x4d.a1h_in1k")  # fmt: skip
    p.add_argument("--key", default=None, help="wrapper entry holding the weights (model_ema)")
    p.add_argument("--form", choices=("a", "b", "c"), default=None, help="block form to store")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="ONNX / TorchScript / ExportedProgram / safetensors")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", required=True,
                   choices=("onnx", "torchscript", "exported-program", "safetensors"))  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--batch", choices=("dynamic", "static"), default="dynamic")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff allowed")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-k classes of images with a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `resnext` console script."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "input_size", None) is not None and args.input_size < 1:
            raise UserError(f"--input-size must be positive, got {args.input_size}")
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except (UserError, ValueError) as e:
        if os.environ.get("RESNEXT_DEBUG"):
            raise
        print(f"resnext: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
