"""`resnext weights [NAME]`: the published weight sets per model, without the network."""

from __future__ import annotations

import argparse


def cmd_weights(args: argparse.Namespace) -> None:
    """List torchvision's weight sets (and timm's tags when timm is installed) per model."""
    from resnext.files.sources import cache_dir, weight_sets

    rows = weight_sets(args.name)
    if not rows:
        print(f"no published weights for {args.name}" if args.name else "no published weights")
        return
    print("| model | source (for --init, --checkpoint, weights=) | top-1 | MB | licence |")
    print("| --- | --- | ---: | ---: | --- |")
    for r in rows:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        size = f"{r['size_mb']:.1f}" if r["size_mb"] is not None else "-"
        default = " (default)" if r["tag"].endswith("(DEFAULT)") else ""
        print(f"| {r['model']} | {r['source']}{default} | {top1} | {size} | "
              f"{r['licence'] or '-'} |")  # fmt: skip
    print(
        "\ntop-1: ImageNet-1K accuracy as torchvision documents it (timm publishes its own in "
        f"its results tables). Downloads are reused offline: torchvision's and URLs' from "
        f"torch.hub's cache ({cache_dir()}){_timm_cache()}."
    )


def _timm_cache() -> str:
    try:
        from resnext.files.sources import hf_cache_dir

        return f", timm's from the Hugging Face cache ({hf_cache_dir()})"
    except ImportError:  # no timm extra: no timm rows either
        return ""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """weights."""
    p = sub.add_parser("weights", help="published pretrained weights per model (no network)")
    p.add_argument("name", nargs="?", metavar="NAME", help="one registered model (default: all)")
    p.set_defaults(func=cmd_weights)
