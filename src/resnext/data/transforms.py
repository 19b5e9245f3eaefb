"""Augmentation and evaluation transforms, in two stages (as NVIDIA's DALI recipes and timm's
prefetcher split them): per image in loader workers, the geometry in uint8 (random-resized crop,
flip, the evaluation resize); per batch where the batch sits, the float work (colour jitter, PCA
lighting, normalisation, CIFAR's pad-crop-flip), drawn per (seed, epoch, step) so that resume
replays it. Workers hand over uint8 (a quarter of float32's bytes) and the GPU, when there is
one, does the arithmetic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from resnext.data.images import image_tensor
from resnext.data.photometric import draw_photometric, photometric


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (or float in [0, 1]) batch -> float, standardised per channel."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def draw_crop_flip(
    n: int, pad: int, hflip: bool, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random offsets in [0, 2 * pad] and flip flags for `n` images."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return oy, ox, flip


def crop_flip(x: Tensor, pad: int, oy: Tensor, ox: Tensor, flip: Tensor) -> Tensor:
    """Zero-pad by `pad`, crop back to the input size at (oy, ox), flip where asked (Appendix A).

    Padding comes after normalisation, as in fb.resnet.torch, so the border is the mean colour.
    """
    n, _, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # N, H, W, C for one gather
    rows = oy.to(dev)[:, None] + torch.arange(h, device=dev)
    cols = ox.to(dev)[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    out = xp[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def draw_resized_crop(
    width: int, height: int, scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:  # fmt: skip
    """Inception's crop (Szegedy et al.; section 4): (top, left, height, width) of a region of
    `scale` of the area and aspect ratio in `ratio` (log-uniform), else the centre crop.

    The same draws from the global generator, in the same order, as torchvision's
    RandomResizedCrop: seeded alike, both cut the same box from an image of this size.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    w, h = width, height  # the whole image, unless its ratio is outside `ratio`
    if width / height < ratio[0]:
        h = int(round(w / ratio[0]))
    elif width / height > ratio[1]:
        w = int(round(h * ratio[1]))
    return (height - h) // 2, (width - w) // 2, h, w


def draft_factor(crop_height: int, crop_width: int, size: int) -> int:
    """The largest 1/2^k scale (8 at most) at which a crop still holds `size` pixels each way,
    so that resizing it to `size` still only shrinks."""
    return next((s for s in (8, 4, 2) if min(crop_height, crop_width) >= s * size), 1)


class InceptionCrop:
    """Per image, in loader workers: the random-resized crop at `size` and a flip, uint8 out.

    Used with `decode_image(..., reduce=view.reduce)`, the crop is drawn on the upright
    full-size geometry before decoding (so the box is the one torchvision would draw), and a
    JPEG decodes at 1/2, 1/4 or 1/8 scale when the crop is that many times the output size;
    the box is then resized from that scale exactly (fractional edges: PIL's resize with a
    box). Called on a uint8 tensor, it draws and cuts at full size.
    """

    def __init__(self, size: int, hflip: bool) -> None:
        self.size, self.hflip = size, hflip
        self._drawn: tuple[tuple[int, int, int, int], bool] | None = None

    def draw(self, width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
        box = draw_resized_crop(width, height)
        return box, self.hflip and bool(torch.rand(1).item() < 0.5)  # v2.RandomHorizontalFlip

    def reduce(self, width: int, height: int) -> int:
        """Draw the crop on the full geometry now; allow the decode to shrink as far as it may."""
        self._drawn = self.draw(width, height)
        return draft_factor(self._drawn[0][2], self._drawn[0][3], self.size)

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        drawn, self._drawn = self._drawn, None
        scale = 1 if isinstance(image, Tensor) else image.info.get("scale", 1)
        if drawn is None:  # no `reduce` call: a tensor, or a caller that decoded in full
            size = image.shape[:-3:-1] if isinstance(image, Tensor) else image.size
            drawn = self.draw(*size)
        (top, left, h, w), flip = drawn
        if scale == 1:  # torchvision's uint8 resize (within 1-2 of PIL's), 5x faster than PIL's
            x = image if isinstance(image, Tensor) else image_tensor(image)
            x = TF.resize(x[..., top : top + h, left : left + w], [self.size] * 2, antialias=True)
        else:  # PIL's resize takes the box at reduced scale exactly, fractions included
            box = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
            x = image_tensor(image.resize((self.size, self.size), Image.BILINEAR, box=box))
        return (x.flip(-1) if flip else x).contiguous()


def train_transform(kind: str, size: int, hflip: bool) -> Callable:
    """The per-image part of training, in loader workers (PIL image or uint8 tensor in, uint8
    out): the inception crop and flip, or (crop_flip, none) the image brought to `size` as
    evaluation brings it; `batch_augment` does the rest on the whole batch."""
    if kind == "inception":  # section 4: scale + aspect-ratio augmentation (Szegedy et al.)
        return InceptionCrop(size, hflip)
    return functools.partial(eval_image, resize=size, crop=size, ten_crop=False)


@dataclass(frozen=True)
class TrainFeed:
    """What the training batches depend on (`TrainConfig.feed()` makes it): the augmentation
    (`augment` kind, `train_size`, `pad`, `hflip`, colour noise, normalisation), the global
    `batch_size` and `seed` its draws follow, and the decoding `workers`."""

    augment: str
    train_size: int
    pad: int
    hflip: bool
    color_jitter: float
    lighting: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int
    seed: int
    workers: int


def batch_augment(x: Tensor, cfg: TrainFeed, gen: torch.Generator, where: Tensor) -> Tensor:
    """The per-batch part of training on a uint8 batch where it sits (the GPU when there is
    one): drawn for the whole global batch from `gen`, one (seed, epoch, step)'s, and taken at
    `where` (this rank's images that were read), so the draws do not depend on the world size
    or on bad files. Colour jitter, lighting and normalisation (inception); normalisation, the
    pad-crop-flip (crop_flip); normalisation only (none)."""
    if cfg.augment == "inception":
        p = draw_photometric(cfg.batch_size, cfg.color_jitter, cfg.lighting, gen)[where]
        return photometric(x, p, cfg.color_jitter > 0, cfg.lighting > 0, cfg.mean, cfg.std)
    x = normalize(x, cfg.mean, cfg.std)
    if cfg.augment == "crop_flip":
        oy, ox, flip = draw_crop_flip(cfg.batch_size, cfg.pad, cfg.hflip, gen)
        x = crop_flip(x, cfg.pad, oy[where], ox[where], flip[where])
    return x


def eval_views(
    x: Tensor, resize: int, crop: int, ten_crop: bool = False, interpolation: str = "bilinear"
) -> Tensor:
    """The one evaluation geometry, for an image (C, H, W) or a batch (N, C, H, W) of uint8:
    shorter side to `resize` (antialiased; the longer side rounded down, as torchvision does),
    then the centre `crop`, or the ten crops (corners, centre and mirrors) in a new dim after N.

    On the CPU, uint8 images are resized as uint8 (torchvision's kernel: within 1 grey level of
    PIL's resize, the one torchvision's presets apply to PIL images, on contiguous tensors and 2
    on decoded, channels-last ones (tests/test_evaluation.py); 5-10x faster than in float);
    elsewhere in float, rounded back to uint8 (also within 1 of PIL's). Images are resized one
    by one either way, so an image gives the same pixels alone or in a batch.
    """
    if min(x.shape[-2:]) != resize:
        mode = TF.InterpolationMode(interpolation)
        antialias = mode != TF.InterpolationMode.NEAREST
        if x.dtype == torch.uint8 and x.device.type == "cpu":
            x = TF.resize(x, resize, interpolation=mode, antialias=antialias)
        else:
            x = TF.resize(x.float(), resize, interpolation=mode, antialias=antialias)
            x = x.round().clamp(0, 255).to(torch.uint8)
    if ten_crop:
        return torch.stack(TF.ten_crop(x, crop), dim=x.dim() - 3)
    return TF.center_crop(x, crop)


def eval_image(
    img, resize: int, crop: int, ten_crop: bool, interpolation: str = "bilinear"
) -> Tensor:
    """`eval_views` of one PIL image or uint8 tensor (for DataLoader workers), contiguous."""
    x = img if isinstance(img, Tensor) else image_tensor(img)
    return eval_views(x, resize, crop, ten_crop, interpolation).contiguous()


def mix(
    x: Tensor, y: Tensor, num_classes: int, mixup: float, cutmix: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al.) or CutMix (Yun et al.), one of them per batch when both are on.

    Returns the mixed images and soft targets.
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=gen).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = (int(torch.randint(0, s, (1,), generator=gen)) for s in (h, w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    one_hot = F.one_hot(y, num_classes).float()
    return x, lam * one_hot + (1 - lam) * one_hot[perm]
