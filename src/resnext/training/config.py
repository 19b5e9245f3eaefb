"""Typed training recipes: named defaults, validated `key=value` overrides, JSON dump.

A recipe is a `TrainConfig` with some fields changed; `resolve_config(recipe, overrides)` applies
command-line options on top and checks every value against the field's type, so a typo or a
wrong type fails before anything is built. When `epochs` overrides the recipe's and `milestones`
is not given, the milestones scale with the schedule (CIFAR's 150 and 225 of 300 epochs are 0.5
and 0.75 of it: `--epochs 20` decays at 10 and 15; one falling on epoch 0 is dropped); explicit
milestones are kept, and refused unless before the last epoch. `data` is stored absolute.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

from resnext.cpus import default_workers
from resnext.data.images import MAX_PIXELS
from resnext.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Interpolation, Preprocessing
from resnext.models.blocks import Form
from resnext.precision import Precision
from resnext.training.fields import check_value, parse_value

if TYPE_CHECKING:
    from resnext.data.transforms import TrainFeed

Dataset = Literal["folder", "wds", "parquet", "cifar10", "cifar100", "digits"]
Augment = Literal["crop_flip", "inception", "none"]
Schedule = Literal["step", "cosine"]
Optimizer = Literal["sgd", "adamw"]
Device = Literal["auto", "cpu", "cuda"]
InMemory = Literal["auto", "yes", "no"]
BadImages = Literal["skip", "error"]
ValSplit = Literal["auto", "val", "test", "none"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as config.json and in every checkpoint.

    `batch_size` is the global batch of one optimizer step; each rank gets
    batch_size / world_size and splits it into `accum_steps` micro-batches, so the micro-batch is
    also the batch over which BN computes its statistics (the paper's: 32 per GPU, section 4).
    `lr` is the rate at a global batch of `lr_batch` and scales linearly with `batch_size`.
    """

    recipe: str = "digits"
    model: str = "resnext11_4x16d"
    dataset: Dataset = "digits"
    data: str = ""
    download: bool = False
    in_memory: InMemory = "auto"
    bad_images: BadImages = "skip"  # bad image files: skip each with a warning, or stop
    # Training stops (one line, exit 2) where more than this fraction of an epoch's images
    # (or of the training split, at load) are bad: a few broken downloads pass, a wrong format
    # or a broken disk does not train on the little that is left.
    max_bad_fraction: float = 0.05
    max_pixels: int = MAX_PIXELS  # more (read from the header) makes a bad image: a pixel bomb
    # Classes of data that records no names (numbered .cls / label values): 0 = 0 to the largest
    # label, refused where the labels leave gaps (datasets.class_names).
    num_classes: int = 0
    # Optimisation.
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.1
    lr_batch: int = 64
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_wd_norm_bias: bool = False
    schedule: Schedule = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # fractions allowed: short CPU schedules
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float = 0.0
    accum_steps: int = 1
    clip_grad: float = 0.0
    # Data and augmentation.
    augment: Augment = "crop_flip"
    train_size: int = 8
    pad: int = 1
    hflip: bool = False
    color_jitter: float = 0.0
    lighting: float = 0.0
    eval_resize: int = 8
    eval_crop: int = 8
    eval_interpolation: Interpolation = "bilinear"
    mean: tuple[float, ...] = (0.305,)
    std: tuple[float, ...] = (0.376,)
    train_limit: int = 0
    # The held-out split validated on: auto (val, else test), val, test, or none (no
    # validation: metrics without val_*, and no best.pt).
    val_split: ValSplit = "auto"
    val_limit: int = 0
    workers: int = 2
    # Model options a name does not fix.
    form: Form = "c"
    zero_init_residual: bool = False
    sync_bn: bool = False
    # Fine-tuning (training/finetune.py): weights to start from (a file, URL, "torchvision",
    # "timm:NAME.TAG"), the stem + stages kept frozen, the backbone's share of the lr.
    init: str = ""
    freeze_stages: int = 0
    backbone_lr_scale: float = 1.0
    # Engine.
    device: Device = "auto"
    precision: Precision = "fp32"
    channels_last: bool = True  # faster or equal training on the CPU (docs/performance.md)
    # CPU only: run groups of < 4 channels merged (exact; models/merged.py).
    merge_groups: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_steps: int = 0
    skip_nonfinite: bool = False  # skip steps with a non-finite loss instead of stopping
    log_steps: int = 50
    tensorboard: bool = False  # scalars in RUN/tensorboard/ (the 'tensorboard' extra)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(
                self, f.name, check_value(f.name, getattr(self, f.name), _hints()[f.name])
            )
        positive = ("epochs", "batch_size", "lr_batch", "accum_steps", "train_size", "eval_crop",
                    "max_pixels")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("train_limit", "val_limit", "workers", "checkpoint_steps", "warmup_epochs",
                     "num_classes"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.eval_resize < self.eval_crop:
            raise ValueError(f"eval_resize ({self.eval_resize}) is smaller than eval_crop")
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of accum_steps")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("freeze_stages", "backbone_lr_scale"):  # fine-tuning
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.data:  # relative to where the run started, not to where it resumes
            object.__setattr__(self, "data", os.path.abspath(os.path.expanduser(self.data)))

    def preprocessing(self) -> Preprocessing:
        """The run's evaluation preprocessing: what validation uses and every checkpoint saves."""
        c = self.eval_resize, self.eval_crop, self.eval_interpolation, self.mean, self.std
        return Preprocessing(*c, len(self.mean))

    def feed(self) -> TrainFeed:
        """What the training batches read of this config (data/ knows no TrainConfig)."""
        from resnext.data.transforms import TrainFeed  # torchvision: ~2 s of start-up

        return TrainFeed(**{f.name: getattr(self, f.name) for f in fields(TrainFeed)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `config_from_dict` reads it back."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def resolve_config(recipe: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A named recipe with overrides applied (values may be strings from `--set key=value`)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; recipes are {sorted(RECIPES)}")
    base, overrides = RECIPES[recipe], overrides or {}
    cfg = apply_overrides(base, overrides)
    if "milestones" not in overrides and cfg.epochs != base.epochs:  # the schedule's shape
        cfg = dataclasses.replace(cfg, milestones=scale_milestones(base, cfg.epochs))
    check_milestones(cfg)
    return cfg


def scale_milestones(recipe: TrainConfig, epochs: int) -> tuple[int, ...]:
    """The recipe's milestones at the same fractions of an `epochs`-epoch schedule."""
    scaled = (m * epochs // recipe.epochs for m in recipe.milestones)
    return tuple(m for m in scaled if 0 < m < epochs)


def check_milestones(cfg: TrainConfig) -> None:
    """Refuse step milestones that the schedule never reaches."""
    late = [m for m in cfg.milestones if m >= cfg.epochs]
    if cfg.schedule == "step" and late:
        raise ValueError(
            f"milestones {', '.join(map(str, late))} are not before the last epoch "
            f"(epochs={cfg.epochs}): the lr would never decay there"
        )


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with fields replaced; unknown keys and wrong types raise ValueError."""
    hints = _hints()
    changes = {}
    for key, value in overrides.items():
        if key not in hints or key == "recipe":
            close = difflib.get_close_matches(key, list(hints), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}; `resnext train --help` lists "
                             "the keys (--set)")  # fmt: skip
        changes[key] = parse_value(key, value, hints[key]) if isinstance(value, str) else value
    return dataclasses.replace(config, **changes)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (config.json or a checkpoint's `config`), validating it."""
    base = RECIPES.get(d.get("recipe", ""), DIGITS)
    rest = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "recipe"}
    return dataclasses.replace(apply_overrides(base, rest), recipe=d.get("recipe", base.recipe))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as indented JSON, atomically (temporary file, rename): a run
    killed at any moment keeps a whole config.json, which is what it restarts from."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@functools.cache
def _hints() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


# Paper section 4 and the original Torch code: Nesterov SGD, step lr /10 at 30, 60, 90 of 100.
IMAGENET = TrainConfig(
    recipe="imagenet",
    model="resnext50_32x4d",
    dataset="folder",
    epochs=100,
    batch_size=256,
    lr=0.1,
    lr_batch=256,
    weight_decay=1e-4,
    schedule="step",
    milestones=(30, 60, 90),
    augment="inception",
    train_size=224,
    pad=0,
    hflip=True,
    color_jitter=0.4,
    lighting=0.1,
    eval_resize=256,
    eval_crop=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    workers=8,
)

# Paper Appendix A: batch 128, lr 0.1, wd 5e-4, 300 epochs, /10 at 150 and 225, pad 4 + crop + flip.
CIFAR = TrainConfig(
    recipe="cifar",
    model="resnext29_8x64d",
    dataset="cifar10",
    epochs=300,
    batch_size=128,
    lr=0.1,
    lr_batch=128,
    nesterov=False,
    weight_decay=5e-4,
    schedule="step",
    milestones=(150, 225),
    augment="crop_flip",
    train_size=32,
    pad=4,
    hflip=True,
    eval_resize=32,
    eval_crop=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

# CPU-sized: 8x8 grey digits, one block per stage; trains to >= 97% in about a minute.
DIGITS = TrainConfig()

# For tests: a few steps on a slice of digits.
TINY = dataclasses.replace(
    DIGITS, recipe="tiny", epochs=3, batch_size=16, train_limit=256, val_limit=64, workers=0
)

# Fine-tuning ImageNet weights on your own folder of images (`--init`). Usual starting points,
# not a tuned recipe: SGD with momentum 0.9 as in torchvision's classification references, at
# a tenth of their from-scratch rate (0.01 per 256 images, scaled linearly with the batch):
# the features are good and a large rate would wash them out; cosine decay over a few epochs
# with a short warm-up, so the new classifier's large first gradients do not reach the
# backbone at full rate; wd 1e-4 as in pretraining; label smoothing 0.1 (torchvision's and
# timm's recent recipes); RandomResizedCrop + flip without the long schedule's colour noise.
# Decoding workers: as many as the usable CPUs allow, up to 4 (more only make torch warn).
FINETUNE = dataclasses.replace(
    IMAGENET,
    recipe="finetune",
    epochs=10,
    batch_size=64,
    lr=0.01,
    lr_batch=256,
    nesterov=False,
    schedule="cosine",
    milestones=(),
    warmup_epochs=1.0,
    label_smoothing=0.1,
    color_jitter=0.0,
    lighting=0.0,
    workers=default_workers(),
)

RECIPES: dict[str, TrainConfig] = {
    "finetune": FINETUNE,
    "imagenet": IMAGENET,
    "cifar": CIFAR,
    "digits": DIGITS,
    "tiny": TINY,
}
