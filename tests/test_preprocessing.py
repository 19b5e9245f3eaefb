"""The evaluation views against independent implementations: PIL's resampling through
torchvision's transforms on PIL images, numpy crops, torchvision's and timm's own published
eval transforms.

The rule pinned: shorter side to `resize` (the longer one scaled and rounded down), antialiased
`interpolation`, then the centre `crop` at offset round((size - crop) / 2), or the four corners
and the centre and the same of the mirrored image (ten-crop); then (x / 255 - mean) / std.

Tolerance: one grey level per pixel. PIL resamples in two passes and rounds to 8 bits between
them, torch rounds once, so the two differ by at most one level (measured: max 1, mean 0.15 to
0.22 over the cases below). Pixel values stay in [56, 200): the bicubic kernel's overshoot then
clips in neither implementation (full-range noise makes PIL's clipped first pass differ by up
to 13 levels, which is not a difference in the rule). A crop one pixel off, the other
interpolation, no antialiasing or a resize of one pixel more each move the mean by 3 levels or
more on these images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from resnext.data.batches import eval_batches
from resnext.data.preprocessing import Preprocessing
from resnext.data.records import FileRecords
from resnext.data.samples import ImageSet

MODES = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
# (height, width): wide, tall, square, with odd and even margins around the crop, the shorter
# side already at `resize` (no resampling) and just above the crop.
SIZES = [(50, 77), (91, 60), (64, 64), (120, 45), (36, 53), (37, 40)]


def noise(h: int, w: int, seed: int, channels: int = 3) -> Image.Image:
    """A picture where every pixel differs from its neighbours, so any geometric slip shows."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(56, 200, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


def reference_resized(img: Image.Image, resize: int, interpolation: str) -> np.ndarray:
    """Shorter side to `resize` by PIL (through torchvision's transforms on a PIL image): (C, H, W)."""
    resized = v2.Resize(resize, MODES[interpolation], antialias=True)(img)
    a = np.asarray(resized, dtype=np.float64)
    return (a[..., None] if a.ndim == 2 else a).transpose(2, 0, 1)


def reference_views(img: Image.Image, resize: int, crop: int, interpolation: str, ten: bool):
    """The views in grey levels, cropped with numpy: (C, crop, crop) or (10, C, crop, crop)."""
    a = reference_resized(img, resize, interpolation)
    h, w = a.shape[-2:]
    assert min(h, w) == resize and max(h, w) == int(resize * max(img.size) / min(img.size))
    top, left = round((h - crop) / 2), round((w - crop) / 2)
    if not ten:
        return a[:, top : top + crop, left : left + crop]
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    views = []
    for image in (a, a[..., ::-1]):  # the five crops of the image, then of its mirror
        views += [image[:, y : y + crop, x : x + crop] for y, x in corners]
    return np.stack(views)


def grey_levels(x: torch.Tensor, pre: Preprocessing) -> np.ndarray:
    """Undo the normalisation: the views in grey levels (0..255)."""
    m = torch.tensor(pre.mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.tensor(pre.std, dtype=torch.float64).view(-1, 1, 1)
    return ((x.double() * s + m) * 255).numpy()


def assert_within_a_level(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= 1 + 1e-3, f"{diff.max():.2f} grey levels apart"
    assert diff.mean() < 0.3, f"mean difference {diff.mean():.3f} grey levels"


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("h", "w"), SIZES)
def test_one_image_matches_pil_resize_and_centre_crop(h, w, interpolation):
    """The transform predict and hub use, on a decoded PIL image."""
    pre = Preprocessing(36, 32, interpolation, MEAN, STD)
    img = noise(h, w, seed=h * w)
    got = grey_levels(pre.transform()(img), pre)
    assert_within_a_level(got, reference_views(img, 36, 32, interpolation, False))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_ten_crop_matches_the_corners_centre_and_mirror(interpolation):
    pre = Preprocessing(40, 32, interpolation, MEAN, STD)
    img = noise(53, 71, seed=3)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    got = grey_levels(pre.views(x[None], ten_crop=True)[0], pre)
    assert_within_a_level(got, reference_views(img, 40, 32, interpolation, True))


def test_grey_images_follow_the_same_rule():
    pre = Preprocessing(20, 16, "bicubic", (0.3,), (0.35,), channels=1)
    img = noise(29, 47, seed=5, channels=1)
    got = grey_levels(pre.transform()(img), pre)
    assert_within_a_level(got, reference_views(img, 20, 16, "bicubic", False))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_evaluate_batches_from_memory_and_from_files_match_the_reference(tmp_path, interpolation):
    """`eval_batches` (evaluate, validation): in-memory uint8 images a batch at a time, and
    files decoded one at a time, give the reference's views."""
    pre = Preprocessing(36, 32, interpolation, MEAN, STD)
    images = [noise(50, 77, seed=i) for i in range(5)]
    want = np.stack([reference_views(img, 36, 32, interpolation, False) for img in images])
    labels = torch.tensor([0, 1, 0, 1, 1])
    pixels = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    for data in (
        ImageSet(["a", "b"], labels, images=pixels),
        ImageSet(["a", "b"], labels, records=FileRecords(paths)),
    ):
        batches = list(eval_batches(data, 2, pre))
        assert [len(y) for _, y in batches] == [2, 2, 1]
        assert torch.equal(torch.cat([y for _, y in batches]), labels)
        got = grey_levels(torch.cat([x for x, _ in batches]), pre)
        assert_within_a_level(got, want)


def test_the_normalised_tensor_is_x_over_255_minus_mean_over_std():
    """No resampling (resize = crop = image size): the exact normalisation, checked in numpy."""
    pre = Preprocessing(32, 32, "bilinear", MEAN, STD)
    img = noise(32, 32, seed=9)
    want = np.asarray(img, np.float64).transpose(2, 0, 1) / 255 - np.array(MEAN)[:, None, None]
    want /= np.array(STD)[:, None, None]
    assert np.abs(pre.transform()(img).double().numpy() - want).max() < 1e-6


@pytest.mark.parametrize(
    ("name", "tag"), [("resnext50_32x4d", "IMAGENET1K_V1"), ("resnext50_32x4d", "IMAGENET1K_V2")]
)
def test_torchvision_weights_get_torchvision_s_own_eval_transform(name, tag):
    """The preprocessing read from torchvision's weight enum, applied by us, equals what
    `weights.transforms()` gives on a photo-sized non-square image (V1: 256, V2: 232)."""
    import torchvision

    from resnext.files.interop import torchvision_preprocessing

    weights = torchvision.models.get_model_weights(name)[tag]
    pre = Preprocessing.from_dict(
        torchvision_preprocessing(name, weights.url.rsplit("/", 1)[1])["preprocessing"]
    )
    img = noise(301, 397, seed=11)
    want, got = weights.transforms()(img), pre.transform()(img)
    assert got.shape == want.shape == (3, 224, 224)
    levels = (got - want).abs().double() * 255 * torch.tensor(pre.std).view(3, 1, 1)
    assert levels.max() <= 1 + 1e-3 and levels.mean() < 0.3


def test_timm_weights_get_timm_s_own_eval_transform():
    """A bicubic source: timm's eval transform for the weights' pretrained config."""
    timm = pytest.importorskip("timm")

    from resnext.files.interop import timm_preprocessing

    name = "resnext50_32x4d.a1h_in1k"
    pre = Preprocessing.from_dict(timm_preprocessing(name)["preprocessing"])
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(name).to_dict())
    assert cfg["interpolation"] == pre.interpolation == "bicubic"
    img = noise(263, 331, seed=13)
    want, got = timm.data.create_transform(**cfg)(img), pre.transform()(img)
    assert got.shape == want.shape == (3, 224, 224)
    levels = (got - want).abs().double() * 255 * torch.tensor(pre.std).view(3, 1, 1)
    assert levels.max() <= 1 + 1e-3 and levels.mean() < 0.3


def test_another_view_size_keeps_the_rest():
    """Table 5's 320 crop: `resize` defaults to the crop; nothing else changes."""
    pre = Preprocessing(256, 224, "bicubic", MEAN, STD)
    assert pre.with_view() is pre
    assert pre.with_view(crop=320) == Preprocessing(320, 320, "bicubic", MEAN, STD)
    assert pre.with_view(resize=288) == Preprocessing(288, 224, "bicubic", MEAN, STD)
    assert pre.with_view(366, 320) == Preprocessing(366, 320, "bicubic", MEAN, STD)


def test_a_file_without_a_record_gets_the_template_s_sizes_and_imagenet_statistics():
    from resnext.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from resnext.files.loader import default_preprocessing
    from resnext.models.zoo import get_spec

    pre = default_preprocessing(get_spec("resnext50_32x4d"))
    assert pre == Preprocessing(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD, 3)
    assert default_preprocessing(get_spec("resnext29_8x64d")) == Preprocessing(
        32, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD, 3
    )  # CIFAR-sized: no resize margin
    grey = default_preprocessing(get_spec("resnext50_32x4d", in_channels=1))
    assert grey.channels == 1 and grey.mean == pytest.approx((np.mean(IMAGENET_MEAN),))
    assert grey.std == pytest.approx((np.mean(IMAGENET_STD),))


def test_the_record_round_trips_and_old_files_read():
    pre = Preprocessing(36, 32, "bicubic", MEAN, STD)
    d = pre.to_dict()
    assert d == {"resize": 36, "crop": 32, "interpolation": "bicubic", "mean": list(MEAN),
                 "std": list(STD), "channels": 3}  # fmt: skip
    assert Preprocessing.from_dict(d) == pre
    old = {k: v for k, v in d.items() if k != "channels"}  # written before `channels` existed
    assert Preprocessing.from_dict(old) == pre
    grey = {"resize": 8, "crop": 8, "mean": [0.3], "std": [0.4]}
    assert Preprocessing.from_dict(grey).channels == 1
    assert Preprocessing.from_dict(grey, channels=1) == Preprocessing(
        8, 8, "bilinear", [0.3], [0.4], 1
    )
    with pytest.raises(ValueError, match=r"unknown preprocessing keys \['size'\]"):
        Preprocessing.from_dict({**d, "size": 3})
    with pytest.raises(ValueError, match="incomplete preprocessing"):
        Preprocessing.from_dict({"resize": 36})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"resize": 0}, "resize must be a positive integer, got 0"),
        ({"crop": True}, "crop must be a positive integer, got True"),
        ({"channels": 2.0}, "channels must be a positive integer"),
        ({"resize": 31}, "resize 31 is smaller than crop 32"),
        ({"interpolation": "area"}, "unknown interpolation 'area'; use bilinear, bicubic, nearest"),
        ({"mean": (0.5, 0.5)}, "mean/std have 2/3 values for 3 channels"),
        ({"std": (0.2, 0.0, 0.2)}, r"std must be positive, got \[0.2, 0.0, 0.2\]"),
    ],
)
def test_a_bad_record_is_refused_naming_the_field(kw, message):
    args = {"resize": 36, "crop": 32, "mean": MEAN, "std": STD} | kw
    with pytest.raises(ValueError, match=message):
        Preprocessing(**args)
    assert Preprocessing(32, 32, "nearest", MEAN, STD).resize == 32  # the edges are allowed


def test_views_refuse_images_of_another_channel_count():
    pre = Preprocessing(36, 32, "bilinear", MEAN, STD)
    with pytest.raises(ValueError, match="images have 1 channels; the model takes 3"):
        pre.views(torch.zeros(1, 40, 40, dtype=torch.uint8))
    x = torch.from_numpy(np.array(noise(40, 50, seed=1))).permute(2, 0, 1)
    assert torch.equal(pre.transform()(x), pre.views(x))  # a uint8 tensor is taken as is
