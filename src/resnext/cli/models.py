"""`resnext info` and `resnext design`: the family itself (complexity, Table 2)."""

from __future__ import annotations

import argparse
import json

import torch

from resnext.cli.common import UserError
from resnext.models.blocks import bottleneck_width
from resnext.models.complexity import count_complexity
from resnext.models.design import block_macs, design_width
from resnext.models.model import build_model
from resnext.models.zoo import _TEMPLATES, ModelSpec, get_spec, list_models


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
    if args.base_planes < 1:
        raise UserError(f"--base-planes must be positive, got {args.base_planes}")
    d = design_width(args.cardinality, args.baseline_width, args.base_planes)
    template, block, depths = _TEMPLATES[args.depth]
    spec = ModelSpec(template, block, depths, args.cardinality, d, base_planes=args.base_planes)
    base = ModelSpec(template, block, depths, 1, args.baseline_width, base_planes=args.base_planes)
    size = default_input_size(spec)
    full, ref = _meta_complexity(spec, size), _meta_complexity(base, size)
    result = {
        "depth": args.depth,
        "cardinality": args.cardinality,
        "d": d,
        "group_width": bottleneck_width(args.base_planes, d, args.cardinality),
        "block_macs": block_macs(args.cardinality, d, args.base_planes),
        "baseline_block_macs": block_macs(1, args.baseline_width, args.base_planes),
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """info, design: the family itself."""
    p = sub.add_parser("info", help="params / MACs / activations of named models")
    p.add_argument("names", nargs="*", metavar="NAME", help="models (default: all)")
    p.add_argument("--input-size", type=int, default=None, help="square input side")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("design", help="complexity-preserving width d for a cardinality (Table 2)")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--cardinality", type=int, required=True)
    p.add_argument("--baseline-width", type=int, default=64, help="d of the C=1 baseline")
    p.add_argument("--base-planes", type=int, default=64, help="first-stage planes (narrow nets)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_design)
