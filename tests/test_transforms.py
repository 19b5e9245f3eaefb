"""The rules of `data/transforms.py` against independent references: numpy's pad and slice for
CIFAR's pad-crop-flip, torchvision's RandomResizedCrop and RandomHorizontalFlip for the inception
crop, Pillow's resize for the evaluation views, numpy for torch's `nearest` rule (the README's
deployment contract) and the normalisation, and a numpy simulation of the CutMix authors' box rule
(Yun et al., `rand_bbox`) for the boxes, compared with scipy's Kolmogorov-Smirnov test under fixed
seeds (deterministic).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from resnext.data.transforms import (
    InceptionCrop,
    batch_augment,
    crop_flip,
    draft_factor,
    draw_crop_flip,
    draw_resized_crop,
    eval_views,
    mix,
    normalize,
    train_transform,
)

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def pixels(n: int, c: int, h: int, w: int, seed: int, low: int = 0, high: int = 256):
    """uint8 noise: every pixel differs from its neighbours, so a slip of one pixel shows."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(low, high, (n, c, h, w), dtype=np.uint8))


def np_normalize(a: np.ndarray, mean, std) -> np.ndarray:
    m, s = np.array(mean)[:, None, None], np.array(std)[:, None, None]
    return (a.astype(np.float64) / 255 - m) / s


def np_pad_crop(a: np.ndarray, pad: int, oy: int, ox: int, flip: bool) -> np.ndarray:
    """(C, H, W): zero-pad by `pad`, take the H x W window at (oy, ox), mirror if asked."""
    h, w = a.shape[-2:]
    out = np.pad(a, ((0, 0), (pad, pad), (pad, pad)))[:, oy : oy + h, ox : ox + w]
    return out[..., ::-1] if flip else out


@pytest.mark.parametrize(("c", "dtype"), [(3, torch.uint8), (1, torch.uint8), (3, torch.float32)])
def test_normalize_is_x_over_255_minus_mean_over_std(c, dtype):
    x = pixels(5, c, 6, 7, seed=c)
    mean, std = MEAN3[:c], STD3[:c]
    want = np_normalize(x.numpy(), mean, std)
    # A float input is taken as already in [0, 1].
    got = normalize(x if dtype == torch.uint8 else x.float() / 255, mean, std)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


@pytest.mark.parametrize(("pad", "h", "w"), [(1, 5, 7), (4, 9, 6), (2, 2, 3)])
def test_crop_flip_is_numpys_pad_and_slice_at_every_offset(pad, h, w):
    """Every (oy, ox) in [0, 2 * pad]^2, mirrored and not, in one batch."""
    offsets = [(oy, ox, f) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
               for f in (False, True)]  # fmt: skip
    oy, ox, flip = (torch.tensor(v) for v in zip(*offsets))
    x = pixels(len(offsets), 3, h, w, seed=pad).float()
    got = crop_flip(x, pad, oy, ox, flip)
    assert got.shape == x.shape and got.is_contiguous()
    for i, (a, b, f) in enumerate(offsets):
        np.testing.assert_array_equal(got[i].numpy(), np_pad_crop(x[i].numpy(), pad, a, b, f))


@pytest.mark.parametrize("pad", [1, 4])
def test_crop_flip_draws_every_offset_pair_evenly_and_flips_half(pad):
    """Offsets uniform over [0, 2 * pad]^2 (both extremes reached; chi-square over the joint
    cells, so the two are independent), flips at even odds, none without hflip."""
    n, k = 4000, 2 * pad + 1
    oy, ox, flip = draw_crop_flip(n, pad, True, torch.Generator().manual_seed(pad))
    assert oy.shape == ox.shape == flip.shape == (n,) and flip.dtype == torch.bool
    assert oy.min() == ox.min() == 0 and oy.max() == ox.max() == 2 * pad
    cells = np.bincount((oy * k + ox).numpy(), minlength=k * k)
    assert len(cells) == k * k and stats.chisquare(cells).pvalue > 0.001
    assert stats.binomtest(int(flip.sum()), n).pvalue > 0.001
    _, _, none = draw_crop_flip(n, pad, False, torch.Generator().manual_seed(pad))
    assert none.dtype == torch.bool and not none.any()


RRC_CASES = [
    # (width, height, scale, ratio): torchvision's defaults, other ranges, and images whose
    # ratio leaves 10 tries empty-handed (the centre-crop fallback, too wide, too tall, within).
    (500, 375, (0.08, 1.0), (3 / 4, 4 / 3)),
    (97, 61, (0.3, 0.6), (0.5, 2.0)),
    (3000, 20, (0.08, 1.0), (3 / 4, 4 / 3)),
    (20, 3000, (0.08, 1.0), (3 / 4, 4 / 3)),
    (80, 60, (1.5, 2.0), (3 / 4, 4 / 3)),
    (30, 90, (1.5, 2.0), (0.2, 0.5)),
    # Tiny images: some tries round a side to 1 px (a valid box) or to 0 (tried again).
    (3, 3, (0.08, 1.0), (3 / 4, 4 / 3)),
    (6, 6, (0.005, 0.05), (0.1, 10.0)),
]


@pytest.mark.parametrize(("width", "height", "scale", "ratio"), RRC_CASES)
def test_the_resized_crop_box_is_torchvisions_for_any_scale_and_ratio(width, height, scale, ratio):
    rrc = v2.RandomResizedCrop(16, scale=scale, ratio=ratio)
    image = Image.new("RGB", (width, height))
    for seed in range(25):
        torch.manual_seed(seed)
        ours = draw_resized_crop(width, height, scale, ratio)
        torch.manual_seed(seed)
        ref = rrc.make_params([image])
        assert ours == (ref["top"], ref["left"], ref["height"], ref["width"]), seed
        # The draws left the global generator where torchvision's leave it.
        after = torch.rand(1)
        torch.manual_seed(seed)
        rrc.make_params([image])
        assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("size", [1, 7, 32, 224])
def test_draft_factor_is_the_largest_power_of_two_up_to_8_that_still_only_shrinks(size):
    for ch in range(size, 20 * size, max(1, size // 3)):
        for cw in (ch, ch + size, 40 * size):
            s = draft_factor(ch, cw, size)
            assert s in (1, 2, 4, 8)
            assert min(ch, cw) >= s * size  # the reduced crop still holds `size` pixels
            assert s == 8 or min(ch, cw) < 2 * s * size  # and the next factor would not


@pytest.mark.parametrize(
    ("hflip", "size", "shape"), [(True, 24, (3, 50, 70)), (False, 17, (1, 90, 33))]
)
def test_the_inception_crop_of_a_tensor_is_torchvisions_crop_and_flip(hflip, size, shape):
    """Seeded alike, v2.RandomResizedCrop (+ RandomHorizontalFlip) on the same uint8 tensor
    gives the same pixels: box, resize and flip."""
    x = pixels(1, *shape, seed=size)[0]
    steps = [v2.RandomResizedCrop(size, antialias=True)]
    ref = v2.Compose(steps + [v2.RandomHorizontalFlip()] if hflip else steps)
    view, flips = InceptionCrop(size, hflip), 0
    for seed in range(12):
        torch.manual_seed(seed)
        got = view(x)
        torch.manual_seed(seed)
        want = ref(x)
        assert got.shape == (shape[0], size, size) and got.is_contiguous()
        assert torch.equal(got, want), seed
        torch.manual_seed(seed)
        unflipped = v2.RandomResizedCrop(size, antialias=True)(x)
        flips += int(not torch.equal(got, unflipped))
    assert (flips > 0) == hflip


def test_the_inception_crop_of_a_pil_image_decoded_in_full_is_the_tensors():
    """A PIL image without a reduced decode: the same box and pixels as its uint8 tensor, and
    `reduce` draws the box used by the next call."""
    x = pixels(1, 3, 64, 48, seed=1)[0]
    image = Image.fromarray(x.permute(1, 2, 0).numpy())
    view = InceptionCrop(16, True)
    for seed in range(6):
        torch.manual_seed(seed)
        want = view(x)
        torch.manual_seed(seed)
        assert torch.equal(view(image), want)
        torch.manual_seed(seed)
        view.reduce(*image.size)
        torch.manual_seed(seed + 100)  # the box was drawn already: later draws do not move it
        assert torch.equal(view(image), want)


def test_reduce_allows_the_largest_decode_scale_that_still_holds_the_output_size():
    """On a full-size geometry, `reduce` answers for torchvision's box (drawn alike): at its
    factor the box still holds `size` pixels each way, at twice that it would not (or 8)."""
    view, rrc = InceptionCrop(120, True), v2.RandomResizedCrop(120)
    factors = set()
    for seed in range(60):
        torch.manual_seed(seed)
        s = view.reduce(1600, 1000)
        torch.manual_seed(seed)
        box = rrc.make_params([Image.new("RGB", (1600, 1000))])
        short = min(box["height"], box["width"])
        assert short >= s * 120 and (s == 8 or short < 2 * s * 120), (seed, s, box)
        factors.add(s)
    assert factors == {2, 4, 8}  # boxes of 310 to 1000 px


def test_a_reduced_decode_is_resized_from_the_box_at_its_scale_bilinearly():
    """A decode at half scale (`scale` 2 in the image's info): the box, divided by 2, resized
    bilinearly; against torchvision's resized_crop on the half-size pixels for boxes with even
    edges. Inside a 2 px border within one level (Pillow's box resize reads past the box's
    edges, where the two differ); bicubic would be 10 or more levels off inside."""
    rng = np.random.default_rng(0)
    half = rng.integers(56, 200, (90, 120, 3), dtype=np.uint8)
    rrc, checked = v2.RandomResizedCrop(40), 0
    for seed in range(120):
        torch.manual_seed(seed)
        box = rrc.make_params([Image.new("RGB", (240, 180))])
        top, left, h, w = (box[k] for k in ("top", "left", "height", "width"))
        if (top | left | h | w) % 2:
            continue
        view = InceptionCrop(40, False)
        torch.manual_seed(seed)
        view.reduce(240, 180)
        image = Image.fromarray(half)
        image.info["scale"] = 2
        got = view(image).int()
        pixels_ = torch.from_numpy(half).permute(2, 0, 1)
        want = v2.functional.resized_crop(pixels_, top // 2, left // 2, h // 2, w // 2, [40, 40])
        diff = (got - want.int()).abs()
        assert diff[:, 2:-2, 2:-2].max() <= 1 and diff.float().mean() < 0.6, seed
        checked += 1
    assert checked >= 5


def pil_resized(a: np.ndarray, resize: int, resample) -> np.ndarray:
    """Shorter side to `resize`, longer rounded down, by Pillow: (C, H, W) float."""
    c, h, w = a.shape
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    planes = [np.asarray(Image.fromarray(p).resize(size, resample), np.float64) for p in a]
    return np.stack(planes)


def np_nearest(a: np.ndarray, resize: int) -> np.ndarray:
    """torch's nearest (the README's contract): source pixel floor(i * float32(in / out))."""
    c, h, w = a.shape
    oh, ow = (int(resize * h / w), resize) if w <= h else (resize, int(resize * w / h))
    rows, cols = (np.floor(np.arange(o, dtype=np.float32) * np.float32(i / o)).astype(int)
                  for o, i in ((oh, h), (ow, w)))  # fmt: skip
    return a[:, rows][:, :, cols].astype(np.float64)


def np_centre(a: np.ndarray, crop: int) -> np.ndarray:
    h, w = a.shape[-2:]
    top, left = round((h - crop) / 2), round((w - crop) / 2)
    return a[..., top : top + crop, left : left + crop]


@pytest.mark.parametrize("road", ["uint8", "float"])
@pytest.mark.parametrize(
    ("h", "w", "resize", "crop"),
    [(50, 77, 36, 32), (91, 60, 40, 31), (37, 40, 36, 36), (10, 14, 3, 3)],
)
def test_nearest_views_are_torchs_floor_rule_exactly(h, w, resize, crop, road):
    """`nearest` (no antialiasing) takes source pixel floor(i * in / out), on the CPU's uint8
    road and on the float road other devices take."""
    x = pixels(2, 3, h, w, seed=h)
    got = eval_views(x if road == "uint8" else x.float(), resize, crop, False, "nearest")
    assert got.dtype == torch.uint8 and got.shape == (2, 3, crop, crop)
    for i in range(2):
        want = np_centre(np_nearest(x[i].numpy(), resize), crop)
        np.testing.assert_array_equal(got[i].numpy(), want)


@pytest.mark.parametrize(("interpolation", "resample"), [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])  # fmt: skip
@pytest.mark.parametrize(("h", "w", "resize", "crop"), [(50, 77, 36, 32), (91, 60, 40, 31)])
def test_the_float_road_matches_pillow_within_a_level(h, w, resize, crop, interpolation, resample):
    """The road for images off the CPU (float in, rounded back to uint8), run on the CPU: Pillow's
    antialiased resize and the centre crop, within one grey level (mid-range pixels: no
    overshoot clipped differently)."""
    x = pixels(2, 3, h, w, seed=w, low=56, high=200)
    got = eval_views(x.float(), resize, crop, False, interpolation)
    assert got.dtype == torch.uint8
    for i in range(2):
        want = np_centre(pil_resized(x[i].numpy(), resize, resample), crop)
        diff = np.abs(got[i].numpy().astype(np.float64) - want)
        assert diff.max() <= 1 and diff.mean() < 0.3


def test_the_float_road_rounds_and_clamps_to_uint8():
    """Full-range noise: bicubic overshoots below 0 and above 255, which the float road clamps
    (as Pillow does) after rounding to the nearest level (not truncating)."""
    x = pixels(1, 3, 12, 18, seed=4)  # upsampled: the cubic kernel overshoots
    got = eval_views(x.float(), 24, 24, False, "bicubic")[0].numpy().astype(np.float64)
    want = np_centre(pil_resized(x[0].numpy(), 24, Image.BICUBIC), 24)
    assert got.min() == 0 and got.max() == 255
    assert np.abs(got - want).mean() < 2.5  # truncation would be ~0.5 level lower on average
    assert abs((got - want).mean()) < 0.2


def test_eval_views_default_to_one_bilinear_centre_crop_and_eval_batch_passes_its_choice():
    x = pixels(2, 3, 50, 77, seed=6, low=56, high=200)
    want = [np_centre(pil_resized(a.numpy(), 36, Image.BILINEAR), 32) for a in x]
    got = eval_views(x, 36, 32)
    assert got.shape == (2, 3, 32, 32)
    assert max(np.abs(g.numpy() - w).max() for g, w in zip(got, want)) <= 1
    for interpolation, resample in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        got = eval_views(x, 36, 32, False, interpolation)
        for g, a in zip(got, x):
            want = np_centre(pil_resized(a.numpy(), 36, resample), 32)
            assert np.abs(g.numpy() - want).max() <= 1


@pytest.mark.parametrize(("h", "w"), [(30, 36), (36, 30)])
def test_an_image_whose_longer_side_is_the_resize_size_is_still_resized(h, w):
    """One image (C, H, W): it is the shorter side that is brought to `resize`."""
    x = pixels(1, 3, h, w, seed=h, low=56, high=200)[0]
    got = eval_views(x, 36, 32, False, "bilinear")
    want = np_centre(pil_resized(x.numpy(), 36, Image.BILINEAR), 32)
    assert got.shape == (3, 32, 32) and np.abs(got.numpy() - want).max() <= 1


def test_an_image_at_the_resize_size_is_only_cropped():
    x = pixels(2, 3, 36, 50, seed=2)
    for interpolation in ("bilinear", "nearest"):
        got = eval_views(x, 36, 32, False, interpolation)
        np.testing.assert_array_equal(got.numpy(), np_centre(x.numpy(), 32))


def test_train_transforms_without_the_inception_crop_bring_images_to_size_as_evaluation():
    """crop_flip and none: shorter side to `size`, centre crop, Pillow's bilinear within a
    level; no flip in the workers (the batch stage flips)."""
    x = pixels(1, 3, 45, 70, seed=3, low=56, high=200)[0]
    image = Image.fromarray(x.permute(1, 2, 0).numpy())
    want = np_centre(pil_resized(x.numpy(), 24, Image.BILINEAR), 24)
    for kind in ("crop_flip", "none"):
        transform = train_transform(kind, 24, hflip=True)
        for source in (x, image):
            got = transform(source)
            assert got.shape == (3, 24, 24) and got.dtype == torch.uint8 and got.is_contiguous()
            assert np.abs(got.numpy() - want).max() <= 1
    view = train_transform("inception", 24, hflip=False)
    assert isinstance(view, InceptionCrop) and (view.size, view.hflip) == (24, False)


def augment_cfg(augment: str, batch_size: int, pad: int = 2, hflip: bool = True):
    return SimpleNamespace(augment=augment, batch_size=batch_size, pad=pad, hflip=hflip,
                           color_jitter=0.0, lighting=0.0, mean=MEAN3, std=STD3)  # fmt: skip


def find_pad_crop(got: np.ndarray, src: np.ndarray, pad: int) -> tuple[int, int, bool]:
    """The one (oy, ox, flip) whose numpy pad-crop of `src` is `got`."""
    hits = [(oy, ox, f) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
            for f in (False, True) if np.allclose(np_pad_crop(src, pad, oy, ox, f), got, atol=1e-5)]  # fmt: skip
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize(("pad", "hflip"), [(2, True), (3, False)])
def test_batch_crop_flip_normalises_then_pads_with_the_mean_and_crops(pad, hflip):
    """Every image is numpy's pad-crop of its normalised self (zero padding after normalising:
    the mean colour); a rank's share (`where`) takes the global batch's draws."""
    n = 12
    x = pixels(n, 3, 10, 9, seed=pad)
    cfg = augment_cfg("crop_flip", n, pad, hflip)
    out = batch_augment(x, cfg, torch.Generator().manual_seed(7), torch.arange(n))
    assert out.dtype == torch.float32 and out.shape == x.shape
    drawn = [find_pad_crop(out[i].numpy(), np_normalize(x[i].numpy(), MEAN3, STD3), pad)
             for i in range(n)]  # fmt: skip
    assert any(f for _, _, f in drawn) == hflip
    assert len({(a, b) for a, b, _ in drawn}) > 3  # the offsets vary
    where = torch.tensor([1, 4, 5, 11])
    part = batch_augment(x[where], cfg, torch.Generator().manual_seed(7), where)
    assert torch.equal(part, out[where])


def test_batch_none_normalises_only():
    x = pixels(5, 3, 6, 6, seed=0)
    out = batch_augment(
        x, augment_cfg("none", 5), torch.Generator().manual_seed(0), torch.arange(5)
    )
    np.testing.assert_allclose(out.numpy(), np_normalize(x.numpy(), MEAN3, STD3), atol=1e-5)


def cutmix_reference(n: int, h: int, w: int, alpha: float, seed: int):
    """The CutMix authors' rule (Yun et al., `rand_bbox`), simulated in numpy: lam ~ Beta(alpha,
    alpha); a box of int(side * sqrt(1 - lam)) per side centred at a uniform pixel; each edge at
    centre -+ half the side (floored), clipped to the image. Rows: (top, left, height, width)."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(alpha, alpha, n)
    ch, cw = (h * np.sqrt(1 - lam)).astype(int), (w * np.sqrt(1 - lam)).astype(int)
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    return np.stack([y0, x0, y1 - y0, x1 - x0], 1)


def pasted_boxes(h: int, w: int, mixup: float, cutmix: float, draws: int):
    """`mix` over `draws` seeds: the box CutMix pasted (from the pixels that changed), the label
    weight, and whether the batch took CutMix; batches that mixed no image are skipped."""
    x = pixels(6, 2, h, w, seed=h).float() + torch.arange(6.0).view(6, 1, 1, 1) * 256
    y = torch.arange(6)
    boxes, lams, cut = [], [], []
    for seed in range(draws):
        xm, t = mix(x, y, 6, mixup, cutmix, torch.Generator().manual_seed(seed))
        i = int((t[torch.arange(6), y] < 1).float().argmax())  # an image that was mixed
        if t[i, i] == 1:
            continue
        changed = (xm[i] != x[i]).any(0)
        partner = x[int(t[i].argsort()[-2 if t[i, i] > 0.5 else -1])]
        # CutMix moves pixels as they are; mixup blends them into new values.
        is_cut = bool(((xm[i] == x[i]) | (xm[i] == partner)).all())
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        lams.append(float(t[i, i]))
        cut.append(is_cut)
        if not is_cut:
            boxes.append(None)
        elif len(rows):
            box = (int(rows[0]), int(cols[0]), len(rows), len(cols))
            assert changed.sum() == box[2] * box[3]  # one filled rectangle
            # The label weight is the pasted share of the pixels.
            assert lams[-1] == pytest.approx(1 - box[2] * box[3] / (h * w), abs=1e-6)
            boxes.append(box)
        else:
            assert lams[-1] == 1  # an empty box moves no pixel and no label weight
            boxes.append((0, 0, 0, 0))
    return boxes, np.array(lams), np.array(cut)


@pytest.mark.parametrize(("h", "w"), [(20, 20), (14, 30)])
def test_cutmix_boxes_follow_the_authors_rule(h, w):
    """Top, left, height, width and area of the pasted boxes against the simulated rule
    (two-sample KS, 600 draws each, p > 0.001 with these seeds); a box whose side is one
    pixel off, an area of (1 - lam) instead of its square root, an unclipped or unshifted
    centre each fail it."""
    boxes, _, _ = pasted_boxes(h, w, 0.0, 1.0, 600)
    got = np.array([b for b in boxes if b is not None and b[2] > 0])
    ref = cutmix_reference(6000, h, w, 1.0, seed=h * w)
    ref = ref[ref[:, 2] * ref[:, 3] > 0]
    for k in range(4):
        assert stats.ks_2samp(got[:, k], ref[:, k]).pvalue > 0.001, k
    area = (got[:, 2] * got[:, 3], ref[:, 2] * ref[:, 3])
    assert stats.ks_2samp(*area).pvalue > 0.001
    # Boxes touch every edge (clipping) and stay inside.
    assert (got[:, 0] == 0).any() and (got[:, 1] == 0).any()
    assert (got[:, 0] + got[:, 2] == h).any() and (got[:, 1] + got[:, 3] == w).any()
    assert (got[:, 0] + got[:, 2] <= h).all() and (got[:, 1] + got[:, 3] <= w).all()


def test_with_both_on_each_takes_its_own_alpha():
    """Mixup(0.3) and CutMix(1.0): mixup's lam ~ Beta(0.3, 0.3), CutMix's boxes as the rule with
    Beta(1, 1); the CutMix share of batches is one half."""
    boxes, lams, cut = pasted_boxes(16, 16, 0.3, 1.0, 900)
    assert stats.binomtest(int(cut.sum()), len(cut)).pvalue > 0.001
    assert stats.kstest(lams[~cut], stats.beta(0.3, 0.3).cdf).pvalue > 0.001
    got = np.array([b for b, c in zip(boxes, cut) if c])
    ref = cutmix_reference(6000, 16, 16, 1.0, seed=3)
    ref = ref[ref[:, 2] * ref[:, 3] > 0]
    for k in (2, 3):
        assert stats.ks_2samp(got[:, k], ref[:, k]).pvalue > 0.001
    # Every batch draws a fresh lam (a small seed space would repeat them; float32 targets
    # may round two of Beta(0.3, 0.3)'s draws near 0 or 1 together).
    assert len(np.unique(lams[~cut])) > 0.97 * (~cut).sum()


@pytest.mark.parametrize(("h", "w"), [(4, 6), (5, 5)])
def test_tiny_cutmix_boxes_have_the_rules_frequencies(h, w):
    """On a tiny image every (top, height) and (left, width) the rule gives is frequent enough to
    count: the pasted boxes' frequencies against the simulated rule's (chi-square, p > 0.001).
    A centre that never falls on the first row or column loses the boxes of one pixel there."""
    boxes, _, _ = pasted_boxes(h, w, 0.0, 1.0, 1500)
    got = np.array([b for b in boxes if b is not None])
    ref = cutmix_reference(200_000, h, w, 1.0, seed=h + w)
    ref = ref[ref[:, 2] * ref[:, 3] > 0]
    for start, side in ((0, h), (1, w)):
        # One cell per (top, height) or (left, width).
        ref_cells, got_cells = (a[:, start] * (side + 1) + a[:, start + 2] for a in (ref, got))
        expected = np.bincount(ref_cells, minlength=(side + 1) ** 2) / len(ref)
        observed = np.bincount(got_cells, minlength=len(expected))
        assert not observed[expected == 0].any()  # nothing the rule cannot give
        keep = expected > 0
        result = stats.chisquare(observed[keep], expected[keep] * len(got))
        assert result.pvalue > 0.001, (start, observed, np.round(expected * len(got)))


def test_the_choice_between_mixup_and_cutmix_comes_from_the_generator():
    """With both on, whatever the global generators hold, one step's generator gives one batch."""
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    outs = []
    for global_seed in range(8):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        outs.append(mix(x, y, 6, 0.4, 1.0, torch.Generator().manual_seed(11)))
    for xm, t in outs[1:]:
        assert torch.equal(xm, outs[0][0]) and torch.equal(t, outs[0][1])


def test_without_alpha_nothing_is_mixed():
    """mixup = cutmix = 0 (as the engine never calls it, but a caller may): lam is 1."""
    x = pixels(4, 3, 8, 8, seed=0).float()
    y = torch.tensor([0, 1, 2, 1])
    xm, t = mix(x, y, 3, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(xm, x) and torch.equal(t, torch.nn.functional.one_hot(y, 3).float())
