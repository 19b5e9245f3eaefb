"""`resnext info` and `resnext design`: the family itself (complexity, Table 2)."""

from __future__ import annotations

import argparse
import json

from resnext.cli.common import DefaultsFormatter, UserError
from resnext.models.blocks import bottleneck_width
from resnext.models.complexity import meta_complexity
from resnext.models.design import TEMPLATES, block_macs, check_design, design_width, template_spec
from resnext.models.zoo import default_input_size, get_spec, list_models


def cmd_info(args: argparse.Namespace) -> None:
    """Params, MACs and activations of named models (all of them without a name)."""
    rows = []
    for name in args.names or list_models():
        spec = get_spec(name)
        size = args.input_size or default_input_size(spec)
        rows.append({"name": name, "input_size": size} | meta_complexity(spec, size).to_dict())
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
    if args.depth not in TEMPLATES or TEMPLATES[args.depth][1] != "bottleneck":
        depths = sorted(k for k, v in TEMPLATES.items() if v[1] == "bottleneck")
        raise UserError(f"--depth must be one of {depths} (bottleneck templates), got {args.depth}")
    if args.cardinality < 1:
        raise UserError(f"--cardinality must be positive, got {args.cardinality}")
    if args.base_planes < 1:
        raise UserError(f"--base-planes must be positive, got {args.base_planes}")
    d = design_width(args.cardinality, args.baseline_width, args.base_planes)
    check_design(args.depth, args.cardinality, d, args.baseline_width, args.base_planes)
    spec = template_spec(args.depth, args.cardinality, d, args.base_planes)
    base = template_spec(args.depth, 1, args.baseline_width, args.base_planes)
    size = default_input_size(spec)
    full, ref = meta_complexity(spec, size).to_dict(), meta_complexity(base, size).to_dict()
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
    p = sub.add_parser("info", help="params / MACs / activations of named models",
                       formatter_class=DefaultsFormatter)  # fmt: skip
    p.add_argument("names", nargs="*", metavar="NAME", help="models (default: all)")
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side (default: 224 for ImageNet models, 32 for CIFAR)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object per model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("design", help="complexity-preserving width d for a cardinality (Table 2)",
                       formatter_class=DefaultsFormatter)  # fmt: skip
    p.add_argument("--depth", type=int, default=50, help="network depth of the bottleneck template")
    p.add_argument("--cardinality", type=int, required=True, help="C, the number of paths")
    p.add_argument("--baseline-width", type=int, default=64, help="d of the C=1 baseline")
    p.add_argument("--base-planes", type=int, default=64, help="first-stage planes (narrow nets)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_design)
