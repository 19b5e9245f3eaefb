"""Batches: one permutation per (seed, epoch) of the *global* batch, each rank taking a contiguous
slice, so a run sees the same batches whatever the number of processes.

Files are decoded per image by DataLoader workers (decode, crop, flip, resize: uint8 out),
unreadable ones noted and left out of their batch; the float work (jitter, lighting, CIFAR's
pad-crop-flip, normalisation) runs on the whole batch on the training device, the same code
for in-memory images and files.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from resnext.data.bad_images import BAD_IMAGE_ERRORS, too_small
from resnext.data.images import decode_image
from resnext.data.preprocessing import Preprocessing
from resnext.data.samples import ImageSet
from resnext.data.transforms import TrainFeed, batch_augment, eval_image, normalize, train_transform
from resnext.errors import one_line


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of one epoch: a function of (seed, epoch) only, so resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_indices(
    n: int, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[Tensor]:
    """This rank's slice of every full global batch of an epoch (the last partial one dropped)."""
    steps = n // batch
    if steps == 0:
        raise ValueError(f"the training set ({n} images) is smaller than one batch ({batch})")
    local = batch // world
    perm = epoch_permutation(n, seed, epoch)
    return [perm[s * batch + rank * local : s * batch + (rank + 1) * local] for s in range(steps)]


def eval_indices(n: int, batch: int, rank: int = 0, world: int = 1) -> list[Tensor]:
    """Every image exactly once over all ranks (no padding, so counts are exact); a rank past
    the last image gets none."""
    mine = torch.arange(n)[rank::world]
    return list(mine.split(batch)) if len(mine) else []


class PerImage(torch.utils.data.Dataset):
    """One image at a time through `transform`, seeded by (seed, epoch, index) for resume; a
    transform with a `reduce` method takes part in decoding (`decode_image`'s `reduce`).

    Nothing raises out of `__getitem__`, so that a DataLoader worker never fails with an error
    that names no file: a bad file gives `(None, label, (path, reason, False))`, any other
    error `(None, label, (path, reason, True))`; `loader` skips the first and raises the second.
    """

    def __init__(self, data: ImageSet, transform: Callable, seed: int | None = None) -> None:
        self.data, self.transform, self.seed = data, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, tuple[str, str, bool] | None]:
        if self.seed is not None:  # the CPU generator only: torch.manual_seed also queues a
            # seeding of each lazily initialised accelerator module (CUDA, XPU, MTIA), each with
            # a formatted Python stack; from a DataLoader's deep stack that was a third of an
            # epoch's time on one core (the draws here use only the CPU generator)
            torch.default_generator.manual_seed((self.seed * 100_003 + self.epoch) * 10_000_019 + i)
        label = int(self.data.labels[i])
        if self.data.images is not None:
            return self.transform(self.data.images[i]), label, None
        path = self.data.name(i)
        try:
            source, path = self.data.open(i)
            image = decode_image(
                source, self.data.decode_channels, reduce=getattr(self.transform, "reduce", None),
                max_pixels=self.data.bad.max_pixels,
            )  # fmt: skip
        except BAD_IMAGE_ERRORS as e:
            return None, label, (path, one_line(e), False)
        reason = too_small(image.size, self.data.bad.min_size)
        if reason is not None:
            return None, label, (path, reason, False)
        try:
            return self.transform(image), label, None
        except Exception as e:  # noqa: BLE001 - reported with the file's name by `loader`
            return None, label, (path, f"{type(e).__name__}: {one_line(e)}", True)


class LoaderError(ValueError):
    """Reading one image failed for a reason other than a bad file; names the file."""


def collate_readable(items: list) -> tuple[Tensor | None, Tensor, Tensor, list]:
    """Stack the readable images of a batch (uint8 from workers: a quarter of float32's bytes
    across processes); their labels, their positions in the batch; the others listed."""
    kept = [k for k, (_, _, bad) in enumerate(items) if bad is None]
    x = torch.stack([items[k][0] for k in kept]) if kept else None
    y = torch.tensor([items[k][1] for k in kept], dtype=torch.int64)
    return x, y, torch.tensor(kept, dtype=torch.int64), [b for _, _, b in items if b is not None]


def loader(
    dataset: PerImage, batches: list[Tensor], workers: int, pin: bool
) -> Iterator[tuple[Tensor | None, Tensor, Tensor]]:
    """A DataLoader over precomputed index batches: (images, labels, their positions in the
    batch) for every batch, images None where none was readable; bad files are noted.

    However it ends (done, an error, or the consumer stops early), its workers are shut down
    here: they ignore SIGTERM (below), so multiprocessing's exit handler, which terminates
    leftover children with SIGTERM and then joins them, would wait on them forever.
    """
    it = iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=workers,
            pin_memory=pin,
            collate_fn=collate_readable,
            worker_init_fn=_leave_stop_signals_to_main,
        )
    )
    try:
        for x, y, kept, bad in it:
            for path, reason, fatal in bad:
                if fatal:
                    raise LoaderError(f"cannot load {path}: {reason}")
                dataset.data.bad.note(path, reason)
            yield x, y, kept
    except RuntimeError as e:  # the DataLoader's own: a worker killed, or it timed out
        raise LoaderError(f"a data loader worker failed: {one_line(e)}{_kill_hint(it)}") from None
    finally:
        _shut_down(it)


def _kill_hint(it: object) -> str:
    """What a worker killed outright (SIGKILL: no Python error, no file named) most often means."""
    codes = [w.exitcode for w in getattr(it, "_workers", [])]
    if -signal.SIGKILL not in codes:
        return ""
    return (" (killed by SIGKILL: most often the out-of-memory killer; try fewer workers or "
            "a smaller batch)")  # fmt: skip


def _shut_down(it: object) -> None:
    """Stop a DataLoader iterator's workers now; kill any that do not stop."""
    shutdown = getattr(it, "_shutdown_workers", None)  # absent with workers=0
    if shutdown is None:
        return
    shutdown()
    for w in getattr(it, "_workers", []):
        if w.is_alive():
            w.kill()
            w.join(timeout=5)


def _leave_stop_signals_to_main(worker: int) -> None:
    """Workers ignore SIGTERM/SIGINT, which Ctrl-C and Slurm send to every process: a worker
    killed by one makes the main process fail before it can save."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def smallest_image(cfg: TrainFeed) -> int:
    """The shortest image side training takes: crop_flip brings images to `train_size` and cuts
    a crop padded by `pad`, and an image below `train_size - 2 * pad` is more likely a thumbnail
    or a mistake than a picture; the other augmentations resize, so any size will do."""
    return max(cfg.train_size - 2 * cfg.pad, 1) if cfg.augment == "crop_flip" else 1


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator for the random choices of one step, the same on every rank and on resume."""
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + step)


def train_batches(
    data: ImageSet,
    cfg: TrainFeed,
    epoch: int,
    start: int,
    rank: int,
    world: int,
    device: torch.device | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The training batches of `epoch` for this rank, from batch `start` on (for resume), on
    `device` (default: where in-memory images sit, else the CPU).

    Per image, loader workers decode files (or slice in-memory images for the inception crop)
    and cut the crop (`train_transform`); then `batch_augment` runs on the whole uint8 batch on
    the device, drawn from the step's generator for the global batch, so its draws depend
    neither on the world size nor on which files were bad. In-memory images of crop_flip and
    none recipes skip the workers: they are at `train_size` already.
    """
    batches = train_indices(len(data), cfg.batch_size, cfg.seed, epoch, rank, world)[start:]
    if device is None:
        device = data.images.device if data.images is not None else torch.device("cpu")
    local = torch.arange(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    if data.images is not None and cfg.augment != "inception":
        read = ((data.images[b.to(data.images.device)], data.labels[b], None) for b in batches)
    else:
        ds = PerImage(data, train_transform(cfg.augment, cfg.train_size, cfg.hflip), cfg.seed)
        ds.epoch = epoch
        read = loader(ds, batches, cfg.workers, device.type == "cuda")
    for step, (x, y, kept) in enumerate(read, start):
        if x is None:  # every image of the batch was bad
            continue
        where = local if kept is None else local[kept]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield batch_augment(x, cfg, step_generator(cfg.seed, epoch, step), where), y


def eval_batches(
    data: ImageSet,
    batch: int,
    pre: Preprocessing,
    ten_crop: bool = False,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's share as `pre`'s normalised views (the ten crops with `ten_crop`): the one
    evaluation transform that predict, export's check and torch.hub also use."""
    batches = eval_indices(len(data), batch, rank, world)
    if data.images is not None:
        for b in batches:
            b = b.to(data.images.device)
            yield pre.views(data.images[b], ten_crop), data.labels[b]
        return
    view = functools.partial(eval_image, **_geometry(pre), ten_crop=ten_crop)
    ds = PerImage(data, view)
    for x, y, _ in loader(ds, batches, workers, torch.cuda.is_available()):
        if x is not None:
            yield normalize(x.to(_device(), non_blocking=True), pre.mean, pre.std), y


def _geometry(pre: Preprocessing) -> dict[str, Any]:
    return {"resize": pre.resize, "crop": pre.crop, "interpolation": pre.interpolation}


def _device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
