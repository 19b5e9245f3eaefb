"""The cardinality study: at one complexity, does raising C beat going wider or deeper?

A study is a grid of arms: "cardinality" (C varies, d from the Table 2 solver so that every
member costs what the C = 1 template costs, or d fixed as in the paper's CIFAR Figure 7),
"width" (C = 1, wider bottlenecks) and "depth" (C = 1, more blocks per stage; Table 4). Every
(member, seed) trains as a normal run directory under the study directory, so re-running the
study skips finished runs and resumes unfinished ones from their last.pt.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from resnext.data.datasets import FILE_DATASETS, decode_once
from resnext.models.blocks import bottleneck_width
from resnext.models.complexity import meta_complexity
from resnext.models.design import design_width
from resnext.models.zoo import ModelSpec, get_spec, model_name
from resnext.training.config import RECIPES, TrainConfig, resolve_config
from resnext.training.plot import read_metrics

log = logging.getLogger("resnext.study.grid")

WidthRule = Literal["preserve", "fixed"]
WALL_FILE = "wall.json"  # in each run directory: wall seconds of every attempt


@dataclass(frozen=True)
class StudyConfig:
    """A study's grid and recipe; the presets below are the paper's settings and a CPU one.

    `template` names the C = 1 baseline (e.g. resnext29_1x64d); `width_rule` "preserve" solves
    d per C at the baseline's complexity (Table 2), "fixed" keeps d (Figure 7 on CIFAR).
    `widths` (d values at C = 1) and `depths` (network depths at C = 1) add Table 4's arms, and
    `wide_cardinalities` adds members with more groups at the template's own d (Table 4's 2x64d:
    twice the complexity through cardinality).
    """

    template: str
    cardinalities: tuple[int, ...]
    recipe: str
    seeds: int = 1
    width_rule: WidthRule = "preserve"
    widths: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    wide_cardinalities: tuple[int, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cardinalities or min(self.cardinalities) < 1:
            raise ValueError(f"cardinalities must be positive, got {self.cardinalities}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be positive, got {self.seeds}")
        for name in ("widths", "depths", "wide_cardinalities"):
            if getattr(self, name) and min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        baseline = get_spec(self.template)
        if baseline.block != "bottleneck" or baseline.cardinality != 1:
            raise ValueError(f"template {self.template!r} must be a C = 1 bottleneck network")


_CPU_RECIPE = {
    "epochs": 3,
    "schedule": "cosine",
    "milestones": (),
    "warmup_epochs": 0.3,
    "lr": 0.2,
    "nesterov": True,
    "label_smoothing": 0.1,
    "channels_last": True,
    "precision": "fp32",
    "workers": 0,
    "checkpoint_steps": 100,
    "log_steps": 100,
}

PRESETS: dict[str, StudyConfig] = {
    # Appendix A, Figure 7: ResNeXt-29 with d = 64, C = 1..16 (complexity grows with C), 300 epochs.
    "cifar": StudyConfig("resnext29_1x64d", (1, 2, 4, 8, 16), "cifar", 3, "fixed"),
    # Table 3: ResNeXt-50 at ResNet-50's complexity, C = 1, 2, 4, 8, 32 (d = 64, 40, 24, 14, 4).
    "imagenet": StudyConfig("resnet50", (1, 2, 4, 8, 32), "imagenet", 1),
    # Measured on 2 CPU cores (docs/results.md): a ResNeXt-11 at a quarter of the paper's
    # width, fp32 + channels_last (bf16 autocast is 5-20x slower here: no native bf16), and a
    # short cosine schedule with a fractional warm-up and label smoothing.
    "cpu": StudyConfig("resnext11_1x64d_p16", (1, 2, 4, 8), "cifar", 2, overrides=_CPU_RECIPE),
    # Table 4 at CPU scale: the cpu preset's C = 1 member at 1x, and three ways to ~1.7x its
    # MACs (within 4% of each other): deeper (ResNeXt-20, two blocks a stage), wider (1x100d) and
    # more cardinality at d = 64 (2x64d); the 1x-complexity C = 8 member (8x12d) as a reference.
    "table4-cpu": StudyConfig(
        "resnext11_1x64d_p16",
        (1, 8),
        "cifar",
        3,
        widths=(100,),
        depths=(20,),
        wide_cardinalities=(2,),
        overrides=_CPU_RECIPE,
    ),  # fmt: skip
}


# The solver counts ~100 candidate blocks; a study asks for the same answers several times.
_design_width = functools.cache(design_width)


@dataclass(frozen=True)
class Member:
    """One network of the grid, trained once per seed."""

    arm: str
    spec: ModelSpec
    label: str

    @property
    def name(self) -> str:
        return model_name(self.spec)


def members(study: StudyConfig) -> list[Member]:
    """The grid: the cardinality arm, then the width and depth arms."""
    base = get_spec(study.template)
    out = []
    for c in study.cardinalities:
        d = base.base_width
        if study.width_rule == "preserve":
            d = _design_width(c, base.base_width, base.base_planes)
        spec = dataclasses.replace(base, cardinality=c, base_width=d)
        out.append(Member("cardinality", spec, f"{c}x{d}d"))
    for c in study.wide_cardinalities:
        spec = dataclasses.replace(base, cardinality=c)
        out.append(Member("cardinality", spec, f"{c}x{base.base_width}d"))
    for d in study.widths:
        out.append(Member("width", dataclasses.replace(base, base_width=d), f"1x{d}d"))
    for depth in study.depths:
        spec = dataclasses.replace(base, depths=_depths(base, depth))
        out.append(Member("depth", spec, f"depth {depth}"))
    for m in out:
        if bottleneck_width(m.spec.base_planes, m.spec.base_width, 1) < 1:
            raise ValueError(f"{m.label} gives zero-width paths at {m.spec.base_planes} planes")
    return out


def _depths(base: ModelSpec, depth: int) -> tuple[int, ...]:
    """Blocks per stage of a `depth`-layer network of the template (9n + 2 on CIFAR)."""
    if base.template == "cifar" and depth > 2 and (depth - 2) % 9 == 0:
        return ((depth - 2) // 9,) * 3
    spec = get_spec(f"resnext{depth}_1x64d") if base.template == "imagenet" else None
    if spec is None or spec.template != base.template:
        raise ValueError(f"no {base.template} network of depth {depth}")
    return spec.depths


def grid(study: StudyConfig, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One row per member: arm, label, C, d, group width, depth, params, MACs and MACs / base.

    The base is the template itself (C = 1 at its own d): `base` marks its row, and every
    row's `macs_ratio` is its multiply-adds over the template's at the recipe's image size.
    """
    # Input channels and classes of the named data sets; a folder keeps the template's.
    shape = {"digits": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100)}.get(cfg.dataset)

    def shaped(s: ModelSpec) -> ModelSpec:
        if shape is None:
            return s
        return dataclasses.replace(s, in_channels=shape[0], num_classes=shape[1])

    template = get_spec(study.template)
    base_macs = meta_complexity(shaped(template), cfg.train_size).macs
    rows = []
    for m in members(study):
        s = shaped(m.spec)
        c = meta_complexity(s, cfg.train_size)
        rows.append({
            "arm": m.arm, "label": m.label, "model": m.name, "cardinality": s.cardinality,
            "d": s.base_width, "group_width": bottleneck_width(s.base_planes, s.base_width,
                                                                s.cardinality),
            "depth": s.depth, "params": c.params, "macs": c.macs,
            "macs_ratio": c.macs / base_macs, "base": m.spec == template,
        })  # fmt: skip
    return rows


# The image shape of the named data sets comes with their own recipe: channels (mean, std),
# size and padding. A study of a CIFAR-recipe template on digits takes digits' (8 px grey).
_NATIVE = {"digits": "digits", "cifar10": "cifar", "cifar100": "cifar"}
_SHAPE_FIELDS = ("mean", "std", "train_size", "pad", "eval_resize", "eval_crop")


def run_config(study: StudyConfig, cli_overrides: dict[str, Any]) -> TrainConfig:
    """The recipe every run shares: the study's overrides, then the command line's.

    For a named data set whose images differ from the recipe's (digits: 8 px, 1 channel), the
    image fields not given on the command line come from that data set's own recipe; an image
    folder decodes to 3 channels, so mean/std must have 3 values (refused before any work).
    """
    overrides = {**study.overrides, **cli_overrides}
    cfg = resolve_config(study.recipe, overrides)
    native = RECIPES.get(_NATIVE.get(cfg.dataset, ""))
    if native is not None and (len(native.mean), native.train_size) != (
        len(cfg.mean),
        cfg.train_size,
    ):
        shape = {k: getattr(native, k) for k in _SHAPE_FIELDS if k not in cli_overrides}
        cfg = dataclasses.replace(cfg, **shape)
    if cfg.dataset in FILE_DATASETS and len(cfg.mean) != 3:
        raise ValueError(
            f"an image folder decodes to 3 channels, but mean/std have {len(cfg.mean)} value(s): "
            "--set mean=R,G,B --set std=R,G,B"
        )
    return cfg


def run_name(arm: str, label: str, seed: int) -> str:
    """A run's directory name inside the study directory, e.g. cardinality-4x24d-seed0."""
    return f"{arm}-{label.replace(' ', '')}-seed{seed}"


def run_dir(out: Path, member: Member, seed: int) -> Path:
    return out / run_name(member.arm, member.label, seed)


def finished(path: Path, epochs: int) -> bool:
    """A run is finished when metrics.jsonl holds its last epoch."""
    if not (path / "metrics.jsonl").is_file():
        return False
    return any(r["epoch"] >= epochs for r in read_metrics(path))


def write_plan(study: StudyConfig, cfg: TrainConfig, out: str | Path) -> Path:
    """study.json: the study, the shared recipe and, as a record for readers, the grid (the
    report derives it again from the study and the recipe, as the trainer does).

    An existing study.json is kept: it is the study's identity (plan.py reads it back).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "study.json").is_file():
        return out
    plan = {"study": dataclasses.asdict(study), "config": cfg.to_dict(), "grid": grid(study, cfg)}
    (out / "study.json").write_text(json.dumps(plan, indent=1, default=list) + "\n")
    return out


def run_study(study: StudyConfig, cfg: TrainConfig, out: str | Path) -> Path:
    """Train every (member, seed) not yet finished, seed-major so early results span all C.

    Returns the study directory; `report.write_report` then summarises it.
    """
    out = write_plan(study, cfg, out)
    with decode_once():  # one decode of the data set for all runs
        _train_all(study, cfg, out)
    return out


def _train_all(study: StudyConfig, cfg: TrainConfig, out: Path) -> None:
    from resnext.training.train import train

    for seed in range(study.seeds):
        for m in members(study):
            path = run_dir(out, m, seed)
            if finished(path, cfg.epochs):
                log.info("skip %s: finished", path.name)
                continue
            verb = "resume" if (path / "last.pt").is_file() else "train"
            log.info("%s %s (%s, seed %d)", verb, path.name, m.name, seed)
            began = time.perf_counter()
            try:  # "auto": start the run, or continue it from its last.pt
                train(dataclasses.replace(cfg, model=m.name, seed=seed), path, "auto")
            finally:
                _add_wall(path, time.perf_counter() - began)


def _add_wall(path: Path, seconds: float) -> None:
    """Accumulate the wall time of every attempt at a run (resumes included)."""
    if not path.is_dir():
        return
    f = path / WALL_FILE
    attempts = json.loads(f.read_text())["attempts"] if f.is_file() else []
    f.write_text(json.dumps({"attempts": [*attempts, round(seconds, 2)]}) + "\n")
