"""The sets a run reads, and the limits on them: the training split and the held-out split it
validates on (`val_split`: auto, val, test, or none), and bad images (`max_bad_fraction`).

The rules every file format shares are applied where every set is loaded (data/datasets.py);
here are the training-only ones: the held-out split has the training split's classes, a
training split must fill one batch, and training stops where too many images are bad.
"""

from __future__ import annotations

import logging
from pathlib import Path

from resnext.data.bad_images import BadImages
from resnext.data.batches import smallest_image
from resnext.data.datasets import ImageSet, NoHeldOut, load_dataset
from resnext.data.samples import common_classes
from resnext.training.config import TrainConfig
from resnext.training.distributed import Context

log = logging.getLogger("resnext.training.train")  # one training log, as train.py writes it


class TooManyBadImages(ValueError):
    """More of the training images are bad than max_bad_fraction allows."""


def load_sets(cfg: TrainConfig, ctx: Context) -> tuple[ImageSet, ImageSet | None]:
    """Training and held-out sets (None with val_split=none); in-memory images move to the
    device once.

    One size rule for crop_flip and none: images are brought to the training size as
    evaluation brings them (shorter side resized, centre crop), in memory or per file; the
    held-out set likewise when its view is square (eval_resize == eval_crop).
    """
    fixed = cfg.augment != "inception"
    train_set = _load(cfg, "train", cfg.train_size if fixed else None, cfg.num_classes)
    if cfg.num_classes not in (0, len(train_set.classes)):
        raise ValueError(f"num_classes={cfg.num_classes}, but {_where(cfg)} names "
                         f"{len(train_set.classes)} classes")  # fmt: skip
    met = train_set.bad.met  # bad images met while loading (skipped, or left out of memory)
    check_bad_images(train_set.bad, met, len(train_set) + met, cfg, f"the training split of "
                     f"{_where(cfg)}")  # fmt: skip
    train_set = train_set.subset(cfg.train_limit).to(ctx.device)
    _check_train_set(train_set, cfg, ctx)
    if fixed and train_set.images is None:
        log.info("training images are brought to %d px as evaluation brings them (shorter side "
                 "resized to %d, centre crop)", cfg.train_size, cfg.train_size)  # fmt: skip
    if cfg.val_split == "none":
        log.info("no held-out split (val_split=none): no validation, and no best.pt")
        return train_set, None
    try:
        # The held-out split has the training split's classes, whatever labels it holds.
        size = cfg.eval_crop if cfg.eval_resize == cfg.eval_crop else None
        val_set = _load(cfg, cfg.val_split, size, len(train_set.classes))
    except NoHeldOut as e:
        raise ValueError(f"{e}; --set val_split=none trains without one") from None
    classes = common_classes(train_set.classes, val_set.classes)
    if classes is None:
        raise ValueError("the training and validation sets have different classes")
    return train_set, val_set.replace(classes=classes).subset(cfg.val_limit).to(ctx.device)


def _load(cfg: TrainConfig, split: str, size: int | None, num_classes: int) -> ImageSet:
    smallest = smallest_image(cfg.feed()) if split == "train" else 1
    return load_dataset(
        cfg.dataset, cfg.data, split, cfg.in_memory, cfg.download, cfg.bad_images, smallest,
        size, cfg.max_pixels, num_classes,
    )  # fmt: skip


def _check_train_set(train_set: ImageSet, cfg: TrainConfig, ctx: Context) -> None:
    """One batch at least; channels and sizes as the config says; the batch divides."""
    if len(train_set) < cfg.batch_size:  # an epoch of no step: nothing would be trained
        skipped = f" ({len(train_set.bad.files)} bad ones skipped)" if train_set.bad.files else ""
        limit = f" (train_limit={cfg.train_limit})" if cfg.train_limit else ""
        raise ValueError(
            f"the training split of {_where(cfg)} holds {len(train_set)} usable images"
            f"{skipped}{limit}, fewer than one batch ({cfg.batch_size}): lower --batch-size"
        )
    if len(cfg.mean) != train_set.channels:
        raise ValueError(f"mean/std have {len(cfg.mean)} values for {train_set.channels} channels")
    memory = train_set.images is not None and cfg.augment != "inception"
    if memory and train_set.images.shape[-1] != cfg.train_size:
        raise ValueError(
            f"images are {train_set.images.shape[-1]} px but train_size={cfg.train_size}; "
            "set train_size (and eval_resize, eval_crop) to match"
        )
    if cfg.batch_size % (ctx.world * cfg.accum_steps):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by processes x accum_steps")


def check_bad_images(bad: BadImages, met: int, read: int, cfg: TrainConfig, when: str,
                     last: str | None = None) -> None:  # fmt: skip
    """Stop where more than `max_bad_fraction` of the `read` training images were bad: `met`
    of them (over every process), the first few named by `bad`."""
    if met <= cfg.max_bad_fraction * read:
        return
    kept = f"; last checkpoint: {last}" if last else ""
    raise TooManyBadImages(
        f"{when}: {met} of {read} training images were bad ({bad.named() or 'on other ranks'}), "
        f"more than max_bad_fraction={cfg.max_bad_fraction:g} allows (--set "
        f"max_bad_fraction=F raises it){kept}"
    )


def _where(cfg: TrainConfig) -> str:
    return cfg.data or cfg.dataset


def untouched(cfg: TrainConfig, split: str) -> str:
    """A note when a folder's test/ split stays unused because val/ is there."""
    if split != "val" or cfg.dataset != "folder" or not (Path(cfg.data) / "test").is_dir():
        return ""
    return f"; {Path(cfg.data) / 'test'} stays untouched (evaluate --split test measures it)"
