"""The ImageNet feed: the inception crop against torchvision's, JPEG draft decoding, the batch
photometric stage against torchvision's per-image ColorJitter and AlexNet's lighting, uint8
evaluation views against torchvision's preset on PIL, one size rule for crop_flip, pixel bombs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from sklearn.datasets import load_sample_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnext.data.batches import PerImage, train_batches, train_indices
from resnext.data.datasets import load_dataset
from resnext.data.images import decode_image
from resnext.data.photometric import EIGVAL, EIGVEC, draw_photometric, photometric
from resnext.data.transforms import InceptionCrop, draw_resized_crop, eval_image
from resnext.training.config import resolve_config


def photo(width: int, height: int) -> Image.Image:
    """A natural photograph (scikit-learn's sample) at `width` x `height`."""
    return Image.fromarray(load_sample_image("china.jpg")).resize((width, height))


def tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1200, 90), (64, 64), (300, 1000)])
def test_the_inception_crop_is_torchvisions_box(size):
    rrc = v2.RandomResizedCrop(224)
    for seed in range(40):
        torch.manual_seed(seed)
        ours = draw_resized_crop(*size)
        torch.manual_seed(seed)
        ref = rrc.make_params([Image.new("RGB", size)])
        assert ours == (ref["top"], ref["left"], ref["height"], ref["width"])


@pytest.mark.parametrize("orientation", [1, 6])
def test_draft_decoding_keeps_the_crop_and_its_pixels(tmp_path, orientation):
    """A 1600x1200 JPEG: crops >= 448 px decode at 1/2 or 1/4 scale; every view stays close to
    torchvision's RandomResizedCrop + flip on the full decode (mean |diff| <= 3 of 255, up to
    2.3 measured: the DCT-domain downscale), those decoded in full within 1. With an EXIF
    rotation, crops are drawn on the upright image."""
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo(1600, 1200).save(path, quality=90, exif=exif)
    ref = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    full = decode_image(path, 3)  # upright
    assert full.size == ((1600, 1200) if orientation == 1 else (1200, 1600))
    view, scales = InceptionCrop(224, hflip=True), []
    for seed in range(30):
        torch.manual_seed(seed)
        image = decode_image(path, 3, reduce=view.reduce)
        ours = view(image).int()
        torch.manual_seed(seed)
        want = tensor(ref(full)).int()
        scales.append(image.info["scale"])
        diff = (ours - want).abs().float()
        if image.info["scale"] == 1:
            assert diff.max() <= 1, seed
        else:
            assert diff.mean() <= 3, (seed, diff.mean())
    assert {1, 2} <= set(scales)  # both roads taken


def test_batch_jitter_and_lighting_equal_torchvisions_functions_per_image():
    x = tensor(photo(40, 30))[None].repeat(12, 1, 1, 1)
    p = draw_photometric(12, 0.4, 0.1, torch.Generator().manual_seed(3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = photometric(x, p, True, True, mean, std)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for i in range(12):
        img = x[i].float() / 255
        for op in p.order[i].tolist():
            img = ops[op](img, p.factors[i, op].item())
        img = img + p.light[i].view(3, 1, 1)
        want = TF.normalize(img, list(mean), list(std))
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=0)


def test_the_batch_draws_are_torchvisions_colorjitter_and_alexnets_lighting():
    """Two-sample KS statistics over 20,000 draws each under 0.025 (the 0.1% critical value is
    0.0195): factors against ColorJitter.make_params, offsets against the old per-image
    Lighting's formula; the six orders equally likely."""
    n = 20_000
    p = draw_photometric(n, 0.4, 0.1, torch.Generator().manual_seed(0))
    jitter = v2.ColorJitter(0.4, 0.4, 0.4)
    torch.manual_seed(0)
    ref = [jitter.make_params([]) for _ in range(n)]
    for k, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor")):
        assert ks_2samp(p.factors[:, k].numpy(), [r[key] for r in ref]).statistic < 0.025
    first = [next(int(i) for i in r["fn_idx"] if i < 3) for r in ref]  # hue (3) is off
    assert abs(np.mean(np.array(first) == 0) - 1 / 3) < 0.02
    orders = torch.unique(p.order, dim=0, return_counts=True)[1].float() / n
    assert len(orders) == 6 and (orders - 1 / 6).abs().max() < 0.01
    old = torch.stack([EIGVEC @ (torch.randn(3) * 0.1 * EIGVAL) for _ in range(n)])
    for c in range(3):
        assert ks_2samp(p.light[:, c].numpy(), old[:, c].numpy()).statistic < 0.025


def test_batch_output_statistics_match_the_old_per_image_pipeline():
    """The old pipeline: ColorJitter on PIL, to float, lighting, normalise, per image; the
    distributions of the views' channel means and spreads agree (KS < 0.06, 1,500 draws)."""
    image = photo(48, 36)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    jitter = v2.ColorJitter(0.4, 0.4, 0.4)
    torch.manual_seed(1)
    old = []
    for _ in range(1500):
        x = TF.to_dtype(TF.pil_to_tensor(jitter(image)), torch.float32, scale=True)
        x = x + (EIGVEC @ (torch.randn(3) * 0.1 * EIGVAL)).view(3, 1, 1)
        old.append(TF.normalize(x, mean, std))
    old = torch.stack(old)
    x = tensor(image)[None].repeat(1500, 1, 1, 1)
    new = photometric(x, draw_photometric(1500, 0.4, 0.1, torch.Generator()), True, True, mean, std)
    for stat in (lambda t: t.mean((2, 3)), lambda t: t.std((2, 3))):
        a, b = stat(old), stat(new)
        for c in range(3):
            assert ks_2samp(a[:, c].numpy(), b[:, c].numpy()).statistic < 0.06


def test_uint8_eval_views_equal_torchvisions_preset_on_pil():
    preset = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    for size in ((500, 375), (375, 500), (640, 427), (300, 256)):
        image = photo(*size)
        diff = (eval_image(image, 256, 224, False).int() - tensor(preset(image)).int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def write_folder(root, sizes):
    """Two classes; image i of each class at sizes[i]; JPEG for odd indices."""
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            suffix = "jpg" if i % 2 else "png"
            photo(w + 7 * (c == "b"), h).save(root / "train" / c / f"{i}.{suffix}")


def test_one_size_rule_for_crop_flip_in_memory_and_per_file(tmp_path, caplog):
    """Mixed sizes (64x48 and 100x75 among 32x32): both paths bring images to 32 px as
    evaluation does and give the same training batches."""
    write_folder(tmp_path, [(32, 32), (64, 48), (32, 32), (100, 75), (32, 32), (40, 32)])
    cfg = resolve_config("cifar", {"batch_size": 4, "workers": 0, "data": str(tmp_path)})
    with caplog.at_level(logging.INFO, logger="resnext.data"):
        memory = load_dataset("folder", str(tmp_path), "train", "yes", memory_size=32)
    assert memory.images.shape == (12, 3, 32, 32)
    assert any("brought to 32x32 px" in r.getMessage() for r in caplog.records)
    files = load_dataset("folder", str(tmp_path), "train", "no")
    big = decode_image(tmp_path / "train" / "a" / "3.jpg", 3)
    want = tensor(v2.Compose([v2.Resize(32, antialias=True), v2.CenterCrop(32)])(big)).int()
    assert (memory.images[3].int() - want).abs().max() <= 1  # torchvision's eval geometry
    for epoch in range(2):
        for (xm, ym), (xf, yf) in zip(
            train_batches(memory, cfg.feed(), epoch, 0, 0, 1),
            train_batches(files, cfg.feed(), epoch, 0, 0, 1),
        ):
            assert torch.equal(ym, yf) and torch.equal(xm, xf)


def test_resumed_and_split_inception_batches_equal_the_uninterrupted_ones(tmp_path):
    write_folder(tmp_path, [(90, 60), (60, 90), (80, 80), (120, 70)])
    cfg = resolve_config("imagenet", {"batch_size": 4, "workers": 0, "train_size": 32})
    files = load_dataset("folder", str(tmp_path), "train", "no")
    whole = list(train_batches(files, cfg.feed(), 1, 0, 0, 1))
    assert len(whole) == 2 and whole[0][0].dtype == torch.float32
    resumed = list(train_batches(files, cfg.feed(), 1, 1, 0, 1))
    assert torch.equal(resumed[0][0], whole[1][0])
    ranks = [list(train_batches(files, cfg.feed(), 1, 0, r, 2)) for r in (0, 1)]
    torch.testing.assert_close(torch.cat([ranks[0][0][0], ranks[1][0][0]]), whole[0][0])
    # A file turned bad leaves the others of its batch as they were.
    bad = files.records.paths[int(train_indices(8, 4, cfg.seed, 1)[0][1])]
    bad.write_bytes(b"not an image")
    again = list(train_batches(files, cfg.feed(), 1, 0, 0, 1))
    assert str(bad) in files.bad.files and len(again[0][1]) == 3
    torch.testing.assert_close(again[0][0], whole[0][0][[0, 2, 3]])
    torch.testing.assert_close(again[1][0], whole[1][0])


def test_a_pixel_bomb_is_a_bad_image_read_from_its_header(tmp_path, caplog):
    write_folder(tmp_path, [(32, 32), (32, 32)])
    bomb = tmp_path / "train" / "a" / "bomb.png"
    Image.new("L", (12000, 12000), 128).save(bomb)  # 144 M pixels, ~150 KB on disk
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match=r"12000x12000 px .* over the limit of 50,000,000"):
        decode_image(bomb, 3)
    for in_memory in ("auto", "no"):
        with caplog.at_level(logging.WARNING, logger="resnext.data"):
            data = load_dataset("folder", str(tmp_path), "train", in_memory, memory_size=32)
            ds = PerImage(data, lambda image: tensor(image))
            results = [ds[i] for i in range(len(data))] if data.images is None else []
        if data.images is None:
            assert sum(r[2] is not None for r in results) == 1
        else:
            assert str(bomb) in data.bad.files and len(data) == 4
    assert any(str(bomb) in r.getMessage() and "max_pixels" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    with pytest.raises(ValueError, match="all 5 samples are bad"):  # every one over the limit
        load_dataset("folder", str(tmp_path), "train", "no", max_pixels=1000)
    with pytest.raises(ValueError, match="over the limit of 1,000"):
        decode_image(data.records.paths[0], 3, max_pixels=1000)
