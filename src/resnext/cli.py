"""The `resnext` command: thin orchestration of the library. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

import torch

from resnext.allocator import allocator_tuning_wanted, tune_allocator
from resnext.models.blocks import bottleneck_width
from resnext.models.complexity import count_complexity
from resnext.models.design import block_macs, design_width
from resnext.models.model import build_model
from resnext.models.zoo import _TEMPLATES, ModelSpec, get_spec, list_models


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


def cmd_train(args: argparse.Namespace) -> None:
    """Train a recipe; under `torchrun` the same command trains on many processes."""
    from pathlib import Path

    from resnext.training.config import parse_set, resolve_config
    from resnext.training.train import resume_config, train

    flags = {"model": args.model, "dataset": args.dataset, "data": args.data, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}  # fmt: skip
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides |= {"deterministic": True} if args.deterministic else {}
    overrides |= {"bad_images": args.bad_images} if args.bad_images else {}
    overrides |= parse_set(args.set)
    if args.out is None and args.resume in (None, "auto"):
        raise UserError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.out and args.resume not in (None, "auto"):
        run = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        if run.resolve() != Path(args.out).resolve():
            raise UserError(
                f"--resume {args.resume} and --out {args.out} name different run directories; "
                "a run continues in its own directory (give one of them)"
            )
    out = Path(args.out or args.resume)
    rank0 = os.environ.get("RANK", "0") == "0"
    _log_to_stderr(rank0)
    cfg = resume_config(args.resume, out, overrides) if args.resume else None
    result = train(cfg or resolve_config(args.recipe, overrides), out, args.resume)
    if rank0:
        err = result["val_top1_error"]
        print(f"test accuracy {100 - err:.2f}% (top-1 error {err:.2f}%, "
              f"top-5 error {result['val_top5_error']:.2f}%, held-out split)")  # fmt: skip
        print(f"run directory: {out}")
        print(f"plot: {out / 'errors.png'}")


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    """`"1,2,4"` -> (1, 2, 4); anything else is a one-line user error."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UserError(f"--{flag} expects comma-separated positive integers, got {text!r}")
    return values


def cmd_study(args: argparse.Namespace) -> None:
    """Train a cardinality study (one run per member and seed) and summarise it (issue 4)."""
    import dataclasses

    from resnext.study.grid import PRESETS, StudyConfig, grid, run_config, run_study, write_plan
    from resnext.study.report import markdown, write_report
    from resnext.training.config import parse_set

    if args.template in PRESETS:
        study = PRESETS[args.template]
    elif args.recipe is None:
        raise UserError(
            f"--template {args.template!r} is no preset {sorted(PRESETS)}: give --recipe"
        )
    else:
        study = StudyConfig(args.template, (1, 2, 4, 8), args.recipe)
    changes = {f: _int_list(f, getattr(args, f)) for f in ("cardinalities", "widths", "depths")
               if getattr(args, f) is not None}  # fmt: skip
    changes |= {"recipe": args.recipe} if args.recipe else {}
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds must be positive, got {args.seeds}")
        changes["seeds"] = args.seeds
    study = dataclasses.replace(study, **changes)
    flags = {"dataset": args.dataset, "data": args.data, "epochs": args.epochs}
    cfg = run_config(study, {k: v for k, v in flags.items() if v is not None} | parse_set(args.set))
    _log_to_stderr(True)
    if not args.report_only:
        print(f"study {args.template}: {study.seeds} seed(s), recipe {study.recipe}, "
              f"{cfg.epochs} epochs, {cfg.dataset} {cfg.data}".rstrip())  # fmt: skip
        print("| arm | model | C | d | group width | depth | params | MACs (M) |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in grid(study, cfg):
            print(f"| {r['arm']} | {r['model']} | {r['cardinality']} | {r['d']} "
                  f"| {r['group_width']} | {r['depth']} | {r['params']:,} "
                  f"| {r['macs'] / 1e6:.1f} |", flush=True)  # fmt: skip
        run_study(study, cfg, args.out)
    else:
        write_plan(study, cfg, args.out)
    print(markdown(write_report(args.out)), end="")
    print(f"results: {args.out}/results.md, results.json, study.png")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Top-1 / top-5 error of a checkpoint on a dataset's validation split."""
    from resnext.training.evaluation import evaluate_checkpoint

    for name in ("resize", "crop", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.workers < 0:
        raise UserError(f"--workers must not be negative, got {args.workers}")
    _log_to_stderr(True)
    r = evaluate_checkpoint(
        args.checkpoint, args.dataset, args.data, args.resize, args.crop, args.ten_crop,
        args.batch_size, args.workers,
    )  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return
    view = f"resize {r['resize']}, {'ten-crop' if r['ten_crop'] else 'crop'} {r['crop']}"
    print(f"top-1 error {r['top1_error']:.2f}%  top-5 error {r['top5_error']:.2f}%  "
          f"({r['images']} images, {view})")  # fmt: skip


def cmd_plot(args: argparse.Namespace) -> None:
    """Draw a run's training and validation error against epochs."""
    from resnext.training.plot import plot_run

    print(plot_run(args.run_dir))


def _log_to_stderr(enabled: bool) -> None:
    import logging

    level = logging.INFO if enabled else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def cmd_convert(args: argparse.Namespace) -> None:
    """Weights from torchvision, timm, pycls or resnext files to a self-describing checkpoint."""
    from resnext.files.convert import import_weights
    from resnext.files.weights import save_weights_file

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
    from resnext.files.export import export_checkpoint

    diff = export_checkpoint(args.checkpoint, args.format, args.out, args.batch == "dynamic")
    print(f"wrote {args.out} ({args.format}, {args.batch} batch); max abs diff to eager {diff:.3g}")
    if not diff <= args.tolerance:
        raise UserError(f"export check failed: max abs diff {diff:.3g} > {args.tolerance:g}")


def cmd_predict(args: argparse.Namespace) -> None:
    """Top-k classes for images and folders of images."""
    from resnext.inference.predict import predict_checkpoint

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


def cmd_bench(args: argparse.Namespace) -> None:
    """Time models against torchvision's, interleaved in one process (issue 6)."""
    from pathlib import Path

    from resnext.inference.bench import BenchConfig, markdown, run_row

    for flag in ("batch_size", "iters"):
        if getattr(args, flag) < 1:
            raise UserError(
                f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
            )
    if args.backend == "onnxruntime" and (args.mode != "infer" or args.precision != "fp32"):
        raise UserError("--backend onnxruntime runs fp32 inference only")
    rows = []
    for name in args.models.split(","):
        get_spec(name)  # unknown names fail before any timing
        cfg = BenchConfig(
            name, args.mode, args.batch_size, args.precision, args.layout, args.compile,
            args.form, args.input_size, args.warmup, args.iters, args.device, args.backend,
            args.merge_groups,
        )  # fmt: skip
        rows.append(run_row(cfg))
    print(markdown(rows), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def build_parser() -> Parser:
    parser = Parser(prog="resnext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_commands in (_model_commands, _training_commands, _deployment_commands):
        add_commands(sub)
    return parser


def _model_commands(sub: argparse._SubParsersAction) -> None:
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


def _training_commands(sub: argparse._SubParsersAction) -> None:
    """train, study, evaluate, plot."""
    p = sub.add_parser("train", help="train with a recipe (imagenet, cifar, digits, tiny)")
    p.add_argument("--recipe", default="digits", help="named defaults (default: digits)")
    p.add_argument("--model", help="registered model name")
    p.add_argument("--dataset", choices=["folder", "cifar10", "cifar100", "digits"])
    p.add_argument("--data", help="dataset path")
    p.add_argument("--out", help="run directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    p.add_argument("--lr", type=float, help="learning rate at the recipe's lr_batch")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", help="reproducible kernels")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (see config.json of a run)")  # fmt: skip
    p.add_argument("--resume", metavar="RUN_DIR|auto", help="continue a run from its last.pt")
    p.add_argument("--bad-images", choices=["skip", "error"],
                   help="unreadable image files: skip with a warning (default) or stop")  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("study", help="cardinality vs width vs depth at equal complexity")
    p.add_argument("--template", required=True, help="preset (cifar, imagenet, cpu) or C=1 model")
    p.add_argument("--cardinalities", help="comma-separated C values (default: the preset's)")
    p.add_argument("--widths", help="'wider instead' arm: comma-separated d at C=1")
    p.add_argument("--depths", help="'deeper instead' arm: comma-separated depths at C=1")
    p.add_argument("--seeds", type=int, help="runs per member (seeds 0..N-1)")
    p.add_argument("--recipe", help="training recipe (default: the preset's)")
    p.add_argument("--dataset", choices=["folder", "cifar10", "cifar100", "digits"])
    p.add_argument("--data", help="dataset path")
    p.add_argument("--out", required=True, help="study directory (re-run to continue)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field for every run")  # fmt: skip
    p.add_argument("--report-only", action="store_true", help="summarise the runs so far")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("evaluate", help="top-1 / top-5 error of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, choices=["folder", "cifar10", "cifar100", "digits"])
    p.add_argument("--data", default="", help="dataset path")
    p.add_argument("--resize", type=int, help="shorter side before cropping")
    p.add_argument("--crop", type=int, help="centre crop (e.g. 224, or 320 as in Table 5)")
    p.add_argument("--ten-crop", action="store_true", help="4 corners + centre, and mirrors")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=4, help="decoding processes for image folders")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="training and validation error against epochs (PNG)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_plot)


def _deployment_commands(sub: argparse._SubParsersAction) -> None:
    """convert, export, predict, bench: weights in and out, and speed."""
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
    p = sub.add_parser("bench", help="images/s against torchvision in the same process")
    p.add_argument("--models", default="resnext50_32x4d", help="comma-separated names")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--layout", choices=["nchw", "nhwc"], default="nhwc")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--form", choices=["a", "b", "c"], default="c")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="inference engine (onnxruntime: fp32, needs the export extra)")  # fmt: skip
    p.add_argument("--merge-groups", action=argparse.BooleanOptionalAction, default=False,
                   help="run groups of fewer than 4 channels merged (what training does on the CPU)")  # fmt: skip
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    p.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `resnext` console script.

    Exit status: 0 done; 2 a mistake in the command line or its inputs (arguments, data,
    checkpoint files); 1 the run failed (non-finite loss, an I/O error such as a full disk);
    128 + signal (143 SIGTERM, 130 SIGINT) stopped on request after saving a checkpoint.
    """
    from resnext.training.engine import NonFiniteLoss
    from resnext.training.stopping import TrainingStopped

    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "input_size", None) is not None and args.input_size < 1:
            raise UserError(f"--input-size must be positive, got {args.input_size}")
        if allocator_tuning_wanted():  # issue 6: up to 2x faster eager CPU steps
            tune_allocator()
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except TrainingStopped as e:
        print(f"resnext: {e}; continue with --resume", file=sys.stderr)
        return e.exit_status
    except (UserError, ValueError, NonFiniteLoss, OSError) as e:
        if os.environ.get("RESNEXT_DEBUG"):
            raise
        print(f"resnext: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, (UserError, ValueError)) else 1
    except KeyboardInterrupt:
        print("resnext: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
