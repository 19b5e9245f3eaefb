"""Batches as rules, checked against plain Python and numpy: each epoch is an order of every
index, ranks share each global batch without overlap whatever their number, a resumed epoch
yields exactly the batches an uninterrupted one had left, and the per-step draws depend on
(seed, epoch, step) alone.
"""

from __future__ import annotations

import itertools
import logging
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from resnext import cpus
from resnext.cpus import default_workers
from resnext.data.bad_images import BadImageError, BadImages
from resnext.data.batches import (
    LoaderError,
    PerImage,
    collate_readable,
    epoch_permutation,
    eval_batches,
    eval_indices,
    loader,
    smallest_image,
    step_generator,
    train_batches,
    train_indices,
)
from resnext.data.records import FileRecords, ShardRecords
from resnext.data.samples import ImageSet
from resnext.training.config import resolve_config


def global_seeds_differ(fn, *args):
    """`fn(*args)` under two different global seeds: what depends on them shows as a change."""
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        np.random.seed(seed)
        out.append(fn(*args))
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 50, 101])
def test_an_epoch_is_every_index_once_and_a_function_of_seed_and_epoch(n):
    for seed, epoch in ((0, 0), (3, 1), (12345, 89)):
        a, b = global_seeds_differ(epoch_permutation, n, seed, epoch)
        assert np.array_equal(np.sort(a.numpy()), np.arange(n))
        assert torch.equal(a, b)


def test_every_seed_and_epoch_gives_its_own_order():
    """No two (seed, epoch) pairs of a grid share an order (e.g. seed + epoch would)."""
    orders = {tuple(epoch_permutation(40, s, e).tolist()) for s in range(5) for e in range(5)}
    assert len(orders) == 25


CASES = [(n, batch, world) for n in (8, 9, 37, 64, 101) for batch in (4, 8, 12)
         for world in (1, 2, 3, 4) if batch % world == 0]  # fmt: skip


@pytest.mark.parametrize(("n", "batch", "world"), CASES)
def test_ranks_share_each_global_batch_and_an_epoch_drops_only_the_last_partial_one(
    n, batch, world
):
    seed, epoch = 7, 2
    if n < batch:
        with pytest.raises(
            ValueError, match=rf"\({n} images\) is smaller than one batch \({batch}\)"
        ):
            train_indices(n, batch, seed, epoch, 0, world)
        return
    shards = [train_indices(n, batch, seed, epoch, r, world) for r in range(world)]
    steps = n // batch
    single = train_indices(n, batch, seed, epoch)  # the same batches on one process
    assert len(single) == steps and all(len(s) == steps for s in shards)
    for s in range(steps):
        parts = [shard[s] for shard in shards]
        assert all(len(p) == batch // world for p in parts)
        assert torch.equal(torch.cat(parts), single[s])
    seen = np.concatenate([b.numpy() for b in single])
    assert len(np.unique(seen)) == steps * batch  # no index twice in an epoch
    assert seen.min() >= 0 and seen.max() < n
    # The order is the epoch's permutation, cut into batches: the left-out rest is its tail.
    assert np.array_equal(seen, epoch_permutation(n, seed, epoch).numpy()[: steps * batch])


def test_each_epoch_leaves_out_other_images():
    n, batch = 37, 8  # 5 left out per epoch
    left = [set(range(n)) - set(torch.cat(train_indices(n, batch, 0, e)).tolist())
            for e in range(6)]  # fmt: skip
    assert all(len(x) == n % batch for x in left)
    assert len({frozenset(x) for x in left}) == 6
    assert set().union(*left) != set(left[0])


@pytest.mark.parametrize("n", [0, 1, 5, 11, 32])
@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_evaluation_sees_every_image_exactly_once_over_the_ranks(n, batch, world):
    shares = [eval_indices(n, batch, r, world) for r in range(world)]
    flat = [i for share in shares for b in share for i in b.tolist()]
    assert sorted(flat) == list(range(n))
    sizes = [sum(len(b) for b in share) for share in shares]
    assert max(sizes) - min(sizes) <= 1  # balanced: no rank waits on another for long
    for share, size in zip(shares, sizes):
        assert len(share) == math.ceil(size / batch)
        assert all(0 < len(b) <= batch for b in share)
        assert all(b.dtype == torch.int64 for b in share)


def test_orders_and_draws_are_those_checkpoints_were_written_with():
    """The seed formulas are part of the checkpoint format: a run resumed by a later version
    must replay the rest of its epoch, the same images in the same order with the same crops
    (golden values from this version; a torch whose generators changed would fail here too)."""
    assert epoch_permutation(10, 1, 2).tolist() == [0, 9, 1, 6, 2, 3, 5, 8, 4, 7]
    assert epoch_permutation(10, 2, 1).tolist() == [1, 6, 3, 7, 9, 5, 2, 8, 0, 4]
    assert torch.randint(0, 1000, (4,), generator=step_generator(1, 2, 3)).tolist() == [
        502, 620, 572, 741,
    ]  # fmt: skip
    data = ImageSet(
        ["a"], torch.zeros(3, dtype=torch.int64), torch.zeros(3, 1, 1, 1, dtype=torch.uint8)
    )
    ds = PerImage(data, lambda image: torch.randint(0, 1000, (3,)), seed=1)
    ds.epoch = 2
    want = [[779, 943, 792], [640, 954, 901], [156, 5, 936]]
    assert [ds[i][0].tolist() for i in range(3)] == want


def test_a_steps_generator_depends_on_seed_epoch_and_step_alone():
    def draw(seed, epoch, step):
        return tuple(torch.rand(4, generator=step_generator(seed, epoch, step)).tolist())

    for triple in ((0, 0, 0), (5, 3, 17), (2**20, 1, 0)):
        a, b = global_seeds_differ(draw, *triple)
        assert a == b
    grid = list(itertools.product(range(3), range(3), range(4)))
    assert len({draw(*t) for t in grid}) == len(grid)
    assert draw(1, 0, 0) != tuple(
        torch.rand(4, generator=torch.Generator().manual_seed(1)).tolist()
    )


def images(n: int, seed: int = 0, size: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return ImageSet(["a", "b", "c"], torch.randint(0, 3, (n,), generator=g), x)


@pytest.mark.parametrize("augment", ["crop_flip", "none", "inception"])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_a_resumed_or_split_epoch_yields_the_uninterrupted_epochs_batches(augment, world):
    data = images(37)
    cfg = resolve_config("tiny", {"batch_size": 8, "augment": augment, "hflip": True,
                                  "pad": 2, "seed": 3})  # fmt: skip
    epoch = 1
    whole = list(train_batches(data, cfg.feed(), epoch, 0, 0, 1))
    assert len(whole) == 37 // 8 and all(x.dtype == torch.float32 for x, _ in whole)
    order = train_indices(37, 8, cfg.seed, epoch)
    for (_, y), b in zip(whole, order):
        assert torch.equal(y, data.labels[b])
    for start in (0, 1, 3):
        parts = [
            list(train_batches(data, cfg.feed(), epoch, start, r, world)) for r in range(world)
        ]
        assert all(len(p) == len(whole) - start for p in parts)
        for s, (x, y) in enumerate(whole[start:]):
            assert torch.equal(torch.cat([p[s][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[s][1] for p in parts]), y)
    if augment != "none":  # the draws change with the epoch: other crops of the same images
        other = list(train_batches(data, cfg.feed(), 2, 0, 0, 1))
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(whole, other))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_in_memory_evaluation_gives_each_images_own_view_once(world):
    data = images(11, size=12)
    pre = resolve_config("tiny", {"eval_resize": 10, "eval_crop": 8}).preprocessing()
    got = {}
    for r in range(world):
        idx = torch.cat(eval_indices(11, 4, r, world))
        outs = list(eval_batches(data, 4, pre, False, 0, r, world))
        x = torch.cat([o[0] for o in outs])
        y = torch.cat([o[1] for o in outs])
        assert torch.equal(y, data.labels[idx])
        got |= dict(zip(idx.tolist(), x))
    assert sorted(got) == list(range(11))
    for i, view in got.items():
        assert torch.equal(view, pre.views(data.images[i : i + 1])[0])


@pytest.mark.parametrize("bad", [(), (1,), (0, 3), (0, 1, 2, 3)])
def test_collate_keeps_the_readable_images_and_their_positions(bad):
    items = [
        (None, k, (f"f{k}", "broken", k == 3)) if k in bad else (torch.full((1, 2, 2), k), 10 + k, None)
        for k in range(4)
    ]  # fmt: skip
    x, y, kept, noted = collate_readable(items)
    good = [k for k in range(4) if k not in bad]
    if good:
        assert torch.equal(x, torch.stack([torch.full((1, 2, 2), k) for k in good]))
    else:
        assert x is None
    assert y.dtype == kept.dtype == torch.int64
    assert y.tolist() == [10 + k for k in good] and kept.tolist() == good
    assert noted == [(f"f{k}", "broken", k == 3) for k in bad]


def folder(tmp_path, sizes, bad=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, size in enumerate(sizes):
        p = tmp_path / f"{k}.png"
        if k in bad:
            p.write_bytes(b"not an image")
        else:
            Image.new("L", size, 10 * k).save(p)
        paths.append(p)
    labels = torch.arange(len(sizes)) % 2
    return ImageSet(["a", "b"], labels, records=FileRecords(paths), decode_channels=1)


def to_tensor(image):
    return torch.from_numpy(np.array(image.resize((4, 4)))).unsqueeze(0)


def test_bad_files_are_left_out_of_their_batch_and_noted(tmp_path, caplog):
    data = folder(tmp_path, [(6, 6), (6, 6), (3, 9), (6, 6), (6, 6)], bad=(1, 4))
    data.bad.min_size = 4  # the 3 px wide image is too small
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        out = list(loader(PerImage(data, to_tensor), [torch.tensor([0, 1, 2]),
                                                      torch.tensor([4]), torch.tensor([3])],
                          0, False))  # fmt: skip
    assert [o[0] is None for o in out] == [False, True, False]
    (x0, y0, k0), (_, y1, k1), (x2, y2, k2) = out
    assert k0.tolist() == [0] and y0.tolist() == [0] and x0[0, 0, 0, 0] == 0
    assert y1.tolist() == [] and k1.tolist() == []
    assert k2.tolist() == [0] and y2.tolist() == [1] and x2[0, 0, 0, 0] == 30
    assert data.bad.files == {data.name(k) for k in (1, 2, 4)}
    assert any("3x9 px, smaller than the 4 px" in r.getMessage() for r in caplog.records)
    data = data.replace(bad=BadImages("error"))
    with pytest.raises(BadImageError, match=f"bad image {data.name(1)}"):
        list(loader(PerImage(data, to_tensor), [torch.tensor([0, 1])], 0, False))


def test_an_error_of_the_transform_names_the_file(tmp_path):
    data = folder(tmp_path, [(6, 6), (6, 6)])

    def fails_on_the_second(image):
        if image.getpixel((0, 0)) == 10:
            raise ZeroDivisionError("boom")
        return to_tensor(image)

    with pytest.raises(LoaderError, match=f"^cannot load {data.name(1)}: ZeroDivisionError: boom$"):
        list(loader(PerImage(data, fails_on_the_second), [torch.tensor([0, 1])], 0, False))
    assert data.bad.files == set()


def test_per_image_draws_depend_on_seed_epoch_and_index():
    data = images(4)

    def noisy(image):
        return image.float() + torch.rand(1)

    ds = PerImage(data, noisy, seed=5)
    first = global_seeds_differ(lambda: [ds[i][0] for i in range(4)])
    assert all(torch.equal(a, b) for a, b in zip(*first))
    assert len({float(x[0, 0, 0] - data.images[i][0, 0, 0]) for i, x in enumerate(first[0])}) == 4
    ds.epoch = 1
    assert not any(torch.equal(a, ds[i][0]) for i, a in enumerate(first[0]))
    assert [ds[i][1] for i in range(4)] == data.labels.tolist()
    assert all(ds[i][2] is None for i in range(4))
    unseeded = PerImage(data, noisy)  # evaluation: no reseeding of the caller's generator
    torch.manual_seed(0)
    a = unseeded[0][0]
    assert not torch.equal(a, unseeded[0][0])


def test_without_an_affinity_mask_the_cpu_count_is_used(monkeypatch):
    monkeypatch.delattr(cpus.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 3)
    assert cpus.usable_cpus() == 3
    assert default_workers() == 3 and default_workers(2) == 2 and default_workers(8) == 3
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: None)
    assert cpus.usable_cpus() == 1


def test_usable_cpus_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this system")
    assert cpus.usable_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("size", "pad"), [(8, 1), (32, 4), (4, 2), (3, 2)])
def test_the_smallest_image_is_what_the_crop_needs(size, pad):
    for augment in ("crop_flip", "none", "inception"):
        cfg = resolve_config("tiny", {"augment": augment, "train_size": size, "pad": pad})
        want = max(size - 2 * pad, 1) if augment == "crop_flip" else 1
        assert smallest_image(cfg.feed()) == want


class Recording:
    """A transform that takes part in decoding: records the size `reduce` is asked about and
    the scale the decoder applied."""

    def __init__(self, factor: int) -> None:
        self.factor, self.asked, self.scales = factor, [], []

    def reduce(self, width: int, height: int) -> int:
        self.asked.append((width, height))
        return self.factor

    def __call__(self, image):
        self.scales.append(image.info.get("scale", 1))
        return to_tensor(image)


def test_a_transforms_reduce_takes_part_in_decoding(tmp_path):
    """`reduce` sees the full size before decoding, and a JPEG then decodes that much smaller
    (PIL's draft mode): the inception crop's fast path."""
    Image.new("L", (64, 48), 90).save(tmp_path / "0.jpg")
    data = ImageSet(["a"], torch.zeros(1, dtype=torch.int64), records=FileRecords([tmp_path / "0.jpg"]),
                    decode_channels=1)  # fmt: skip
    for factor in (1, 2, 4):
        t = Recording(factor)
        x, label, bad = PerImage(data, t)[0]
        assert bad is None and label == 0 and x.shape == (1, 4, 4)
        assert t.asked == [(64, 48)] and t.scales == [factor]


def test_the_sets_pixel_limit_applies_to_files_read_by_workers(tmp_path):
    data = folder(tmp_path, [(6, 6), (5, 4)])
    data.bad.max_pixels = 25  # 6x6 is over, 5x4 under
    out = [PerImage(data, to_tensor)[i] for i in range(2)]
    assert out[0][0] is None and "over the limit of 25" in out[0][2][1]
    assert out[0][2][0] == data.name(0) and out[0][2][2] is False
    assert out[1][2] is None


class Shards(ShardRecords):
    """Records whose second one cannot be read (a disk error while reading a shard)."""

    def __init__(self, tmp_path) -> None:
        Image.new("L", (6, 6), 40).save(tmp_path / "r.png")
        self.data = (tmp_path / "r.png").read_bytes()

    def __len__(self) -> int:
        return 2

    def name(self, i: int) -> str:
        return f"shard-0.tar:{i:03d}"

    def read(self, i: int) -> bytes:
        if i == 1:
            raise OSError("Input/output error")
        return self.data


def test_an_unreadable_record_is_named_by_its_record(tmp_path):
    data = ImageSet(["a"], torch.zeros(2, dtype=torch.int64), records=Shards(tmp_path),
                    decode_channels=1)  # fmt: skip
    x, _, bad = PerImage(data, to_tensor)[0]
    assert bad is None and int(x[0, 0, 0]) == 40
    assert PerImage(data, to_tensor)[1] == (
        None,
        0,
        ("shard-0.tar:001", "Input/output error", False),
    )


def test_a_non_image_file_is_bad_with_the_decoders_reason(tmp_path):
    data = folder(tmp_path, [(6, 6), (6, 6)], bad=(1,))
    _, _, (path, reason, fatal) = PerImage(data, to_tensor)[1]
    assert path == data.name(1) and not fatal
    assert reason == "not an image file PIL can identify"  # not PIL's repr of the object


def _exit_in_worker(image):
    os._exit(3)


def _kill_in_worker(image):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _stop_signals(image):
    import signal

    return torch.tensor([signal.getsignal(s) == signal.SIG_IGN
                         for s in (signal.SIGTERM, signal.SIGINT)])  # fmt: skip


def workers_alive() -> list:
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.is_alive()]


KILL_HINT = (" (killed by SIGKILL: most often the out-of-memory killer; try fewer workers or "
             "a smaller batch)")  # fmt: skip


@pytest.mark.parametrize(
    ("transform", "hint"), [(_exit_in_worker, ""), (_kill_in_worker, KILL_HINT)]
)
def test_a_dead_worker_is_one_error_with_the_dataloaders_reason(transform, hint):
    data = images(4)
    before = workers_alive()
    with pytest.raises(LoaderError) as e:
        list(loader(PerImage(data, transform), [torch.arange(2), torch.arange(2, 4)], 1, False))
    message = str(e.value)
    assert message.startswith("a data loader worker failed: DataLoader worker (pid")
    assert message.endswith("exited unexpectedly" + hint)
    assert ("SIGKILL" in message) == bool(hint)
    assert workers_alive() == before  # shut down although the traceback holds the loader


def test_a_collate_error_without_workers_is_one_error():
    data = ImageSet(
        ["a"], torch.zeros(2, dtype=torch.int64), torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    )
    sizes = iter([(1, 4, 4), (1, 5, 5)])
    ds = PerImage(data, lambda image: torch.zeros(next(sizes), dtype=torch.uint8))
    with pytest.raises(LoaderError, match=r"^a data loader worker failed: stack expects each tensor"
                       r"[^(]*$"):  # fmt: skip
        list(loader(ds, [torch.arange(2)], 0, False))


def test_workers_ignore_the_stop_signals_and_stop_with_the_loader():
    """Ctrl-C and Slurm signal every process: only the main one acts on them (it saves first).
    A consumer that stops early leaves no worker behind."""
    data = images(6)
    before = workers_alive()
    batches = [torch.arange(2), torch.arange(2, 4), torch.arange(4, 6)]
    it = loader(PerImage(data, _stop_signals), batches, 1, False)
    x, _, _ = next(it)
    assert x.tolist() == [[True, True], [True, True]]
    it.close()
    assert workers_alive() == before


def test_in_memory_inception_crops_and_flips_per_image():
    data = images(32, size=12)
    base = {"batch_size": 32, "augment": "inception", "train_size": 8, "seed": 1,
            "color_jitter": 0.0, "lighting": 0.0}  # fmt: skip
    plain = next(
        train_batches(data, resolve_config("tiny", base | {"hflip": False}).feed(), 0, 0, 0, 1)
    )
    flips = next(
        train_batches(data, resolve_config("tiny", base | {"hflip": True}).feed(), 0, 0, 0, 1)
    )
    assert plain[0].shape == flips[0].shape == (32, 1, 8, 8)  # cut from 12 px images
    same = [torch.equal(a, b) for a, b in zip(plain[0], flips[0])]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(plain[0], flips[0])]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 0 < sum(mirrored) < 32  # a fair coin per image (2**-31 to fail by chance)


def test_a_batch_of_only_bad_files_is_skipped_and_the_epoch_goes_on(tmp_path):
    cfg = resolve_config("tiny", {"batch_size": 2, "augment": "none", "train_size": 6})
    order = train_indices(6, 2, cfg.seed, 0)
    good = folder(tmp_path / "good", [(6, 6)] * 6)
    whole = list(train_batches(good, cfg.feed(), 0, 0, 0, 1))
    data = folder(tmp_path / "bad", [(6, 6)] * 6, bad=order[1].tolist())
    got = list(train_batches(data, cfg.feed(), 0, 0, 0, 1))
    assert len(got) == 2 and len(data.bad.files) == 2
    for (x, y), (wx, wy) in zip(got, [whole[0], whole[2]]):
        assert torch.equal(x, wx) and torch.equal(y, wy)


def test_evaluation_defaults_and_ten_crops_in_memory_and_from_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8, generator=g)
    memory = ImageSet(["a", "b"], torch.arange(5) % 2, pixels)
    files = folder(tmp_path, [(12, 12)] * 5)
    for k, p in enumerate(files.records.paths):
        Image.fromarray(pixels[k, 0].numpy()).save(p)
    pre = resolve_config("tiny", {"eval_resize": 12, "eval_crop": 8}).preprocessing()
    one = [x for x, _ in eval_batches(memory, 2, pre)]  # defaults: one view, one process
    assert [x.shape for x in one] == [(2, 1, 8, 8), (2, 1, 8, 8), (1, 1, 8, 8)]
    assert torch.equal(torch.cat(one), pre.views(pixels))
    for data in (memory, files):
        got = list(eval_batches(data, 2, pre, ten_crop=True))
        x, y = torch.cat([b[0] for b in got]), torch.cat([b[1] for b in got])
        assert x.shape == (5, 10, 1, 8, 8) and y.tolist() == [0, 1, 0, 1, 0]
        assert torch.equal(x, pre.views(pixels, ten_crop=True))


def test_default_rank_and_world_are_one_process_seeing_everything():
    assert torch.equal(torch.cat(eval_indices(10, 4)), torch.arange(10))


def _stuck_on_late_images(image):
    if int(image.flatten()[0]) >= 2:  # images 2 and 3: a read that never returns (a dead NFS)
        import time

        time.sleep(60)
    return image


def test_a_worker_stuck_in_a_read_is_killed_when_the_loader_stops(monkeypatch):
    """Workers ignore SIGTERM, so DataLoader's own shutdown (join, then SIGTERM) leaves a
    stuck one running and Python's exit handler would wait on it forever: it is killed."""
    from torch.utils.data import _utils

    monkeypatch.setattr(_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)  # DataLoader's join timeout
    data = ImageSet(["a"], torch.zeros(4, dtype=torch.int64),
                    torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2))  # fmt: skip
    before = workers_alive()
    it = loader(
        PerImage(data, _stuck_on_late_images), [torch.arange(2), torch.arange(2, 4)], 1, False
    )
    x, _, _ = next(it)
    assert x[:, 0, 0, 0].tolist() == [0, 1]
    it.close()
    assert workers_alive() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_land_on_the_training_device(tmp_path):
    """In-memory images on the GPU stay there; files decoded by workers are moved to it."""
    cfg = resolve_config("tiny", {"batch_size": 2, "augment": "none", "train_size": 6})
    memory = images(4, size=6)
    memory = memory.to(torch.device("cuda"))
    files = folder(tmp_path, [(6, 6)] * 4)
    for data, device in ((memory, None), (files, torch.device("cuda"))):
        for x, y in train_batches(data, cfg.feed(), 0, 0, 0, 1, device):
            assert x.is_cuda and y.is_cuda
    for x, _ in eval_batches(files, 2, cfg.preprocessing()):
        assert x.device == torch.device("cuda", torch.cuda.current_device())
