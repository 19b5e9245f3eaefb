"""`resnext pack`: an image folder, WebDataset shards or parquet files written as WebDataset
shards or parquet files (pack's layout: one positioned read per image)."""

from __future__ import annotations

import argparse

from resnext.cli.common import DefaultsFormatter, log_to_stderr


def cmd_pack(args: argparse.Namespace) -> None:
    """Pack every split of a data set, once, for a cluster's file system."""
    from resnext.data.pack import pack_dataset

    log_to_stderr(True)
    splits = pack_dataset(args.dataset, args.data, args.format, args.out, args.name,
                          args.shard_size, args.num_classes)  # fmt: skip
    total = sum(entry["num_samples"] for entry in splits.values())
    print(f"packed {total} images ({', '.join(splits)}) into {args.out}: "
          f"train with --dataset {args.format} --data {args.out}")  # fmt: skip


def add_commands(sub: argparse._SubParsersAction) -> None:
    """pack."""
    from resnext.data.datasets import FILE_DATASETS
    from resnext.data.pack import FORMATS

    p = sub.add_parser(
        "pack", formatter_class=DefaultsFormatter,
        help="write an image folder, shards or parquet files as shards or parquet files",
        description="Copies the encoded images (never re-encoded) of every split, in order: "
        "train, val/ as validation, test. wds writes NAME-SPLIT-NNNN.tar and _info.json as "
        "timm's imagenet-1k-wds; parquet writes data/SPLIT-NNNNN-of-NNNNN.parquet as Hugging "
        "Face's ILSVRC/imagenet-1k, one row per row group (fast random rows).",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="the data set to pack")
    p.add_argument("--dataset", default="folder", choices=FILE_DATASETS,
                   help="its layout (pack parquet again to make its row groups small)")  # fmt: skip
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="a new (or empty) folder")
    p.add_argument("--name", default="", help="shard name prefix (default: --data's folder name)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard file")
    p.add_argument("--num-classes", type=int, default=0,
                   help="classes of data that records no class names (0: from its labels)")  # fmt: skip
    p.set_defaults(func=cmd_pack)
