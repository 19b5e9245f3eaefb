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

from resnext.data import batches
from resnext.data.batches import (
    LoaderError,
    PerImage,
    collate_readable,
    default_workers,
    epoch_permutation,
    eval_batches,
    eval_indices,
    loader,
    smallest_image,
    step_generator,
    train_batches,
    train_indices,
)
from resnext.data.imageset import BadImageError, ImageSet
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
    whole = list(train_batches(data, cfg, epoch, 0, 0, 1))
    assert len(whole) == 37 // 8 and all(x.dtype == torch.float32 for x, _ in whole)
    order = train_indices(37, 8, cfg.seed, epoch)
    for (_, y), b in zip(whole, order):
        assert torch.equal(y, data.labels[b])
    for start in (0, 1, 3):
        parts = [list(train_batches(data, cfg, epoch, start, r, world)) for r in range(world)]
        assert all(len(p) == len(whole) - start for p in parts)
        for s, (x, y) in enumerate(whole[start:]):
            assert torch.equal(torch.cat([p[s][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[s][1] for p in parts]), y)
    if augment != "none":  # the draws change with the epoch: other crops of the same images
        other = list(train_batches(data, cfg, 2, 0, 0, 1))
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
    paths = []
    for k, size in enumerate(sizes):
        p = tmp_path / f"{k}.png"
        if k in bad:
            p.write_bytes(b"not an image")
        else:
            Image.new("L", size, 10 * k).save(p)
        paths.append(p)
    labels = torch.arange(len(sizes)) % 2
    return ImageSet(["a", "b"], labels, paths=paths, decode_channels=1)


def to_tensor(image):
    return torch.from_numpy(np.array(image.resize((4, 4)))).unsqueeze(0)


def test_bad_files_are_left_out_of_their_batch_and_noted(tmp_path, caplog):
    data = folder(tmp_path, [(6, 6), (6, 6), (3, 9), (6, 6), (6, 6)], bad=(1, 4))
    data.min_size = 4  # the 3 px wide image is too small
    with caplog.at_level(logging.WARNING, logger="resnext.data.datasets"):
        out = list(loader(PerImage(data, to_tensor), [torch.tensor([0, 1, 2]),
                                                      torch.tensor([4]), torch.tensor([3])],
                          0, False))  # fmt: skip
    assert [o[0] is None for o in out] == [False, True, False]
    (x0, y0, k0), (_, y1, k1), (x2, y2, k2) = out
    assert k0.tolist() == [0] and y0.tolist() == [0] and x0[0, 0, 0, 0] == 0
    assert y1.tolist() == [] and k1.tolist() == []
    assert k2.tolist() == [0] and y2.tolist() == [1] and x2[0, 0, 0, 0] == 30
    assert data.bad == {str(data.paths[k]) for k in (1, 2, 4)}
    assert any("3x9 px, smaller than the 4 px" in r.getMessage() for r in caplog.records)
    data.on_bad, data.bad = "error", set()
    with pytest.raises(BadImageError, match=f"bad image {data.paths[1]}"):
        list(loader(PerImage(data, to_tensor), [torch.tensor([0, 1])], 0, False))


def test_an_error_of_the_transform_names_the_file(tmp_path):
    data = folder(tmp_path, [(6, 6), (6, 6)])

    def fails_on_the_second(image):
        if image.getpixel((0, 0)) == 10:
            raise ZeroDivisionError("boom")
        return to_tensor(image)

    with pytest.raises(
        LoaderError, match=f"^cannot load {data.paths[1]}: ZeroDivisionError: boom$"
    ):
        list(loader(PerImage(data, fails_on_the_second), [torch.tensor([0, 1])], 0, False))
    assert data.bad == set()


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
    monkeypatch.delattr(batches.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(batches.os, "cpu_count", lambda: 3)
    assert batches.usable_cpus() == 3
    assert default_workers() == 3 and default_workers(2) == 2 and default_workers(8) == 3
    monkeypatch.setattr(batches.os, "cpu_count", lambda: None)
    assert batches.usable_cpus() == 1


def test_usable_cpus_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this system")
    assert batches.usable_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("size", "pad"), [(8, 1), (32, 4), (4, 2), (3, 2)])
def test_the_smallest_image_is_what_the_crop_needs(size, pad):
    for augment in ("crop_flip", "none", "inception"):
        cfg = resolve_config("tiny", {"augment": augment, "train_size": size, "pad": pad})
        want = max(size - 2 * pad, 1) if augment == "crop_flip" else 1
        assert smallest_image(cfg) == want
