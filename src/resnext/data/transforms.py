"""Augmentation and evaluation transforms: whole-batch tensor ops for in-memory images,
a per-image torchvision pipeline for large ones (random-resized crop, colour jitter, PCA lighting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnext.data.images import image_tensor

# PCA of ImageNet RGB pixels (AlexNet's lighting noise; fb.resnet.torch, which the paper used).
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


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


class Lighting:
    """AlexNet-style PCA colour noise with standard deviation `alpha`, on a [0, 1] image."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def __call__(self, img: Tensor) -> Tensor:
        rgb = EIGVEC @ (torch.randn(3) * self.alpha * EIGVAL)
        return img + rgb.view(3, 1, 1).to(img.dtype)


def train_transform(
    kind: str,
    size: int,
    pad: int,
    hflip: bool,
    jitter: float,
    lighting: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """The per-image training pipeline (PIL image or uint8 tensor in, normalised float out)."""
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    flip = [v2.RandomHorizontalFlip()] if hflip else []
    if kind == "inception":  # section 4: scale + aspect-ratio augmentation (Szegedy et al.)
        steps = [v2.RandomResizedCrop(size, antialias=True), *flip]
        steps += [v2.ColorJitter(jitter, jitter, jitter)] if jitter else []
        steps += to_float + ([Lighting(lighting)] if lighting else [])
        steps += [v2.Normalize(list(mean), list(std))]
    elif kind == "crop_flip":
        steps = [*to_float, v2.Normalize(list(mean), list(std))]
        steps += [v2.RandomCrop(size, padding=pad or None), *flip]
    else:
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size), *to_float]
        steps += [v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_views(
    x: Tensor, resize: int, crop: int, ten_crop: bool = False, interpolation: str = "bilinear"
) -> Tensor:
    """The one evaluation geometry, for an image (C, H, W) or a batch (N, C, H, W) of uint8:
    shorter side to `resize` (antialiased; the longer side rounded down, as torchvision does),
    then the centre `crop`, or the ten crops (corners, centre and mirrors) in a new dim after N.

    Resizing runs in float and rounds back to uint8, so one image and a batch holding it give
    the same pixels whichever caller (predict, evaluate, export's check) asks.
    """
    if min(x.shape[-2:]) != resize:
        mode = TF.InterpolationMode(interpolation)
        antialias = mode != TF.InterpolationMode.NEAREST
        x = TF.resize(x.float(), resize, interpolation=mode, antialias=antialias)
        x = x.round().clamp(0, 255).to(torch.uint8)
    if ten_crop:
        return torch.stack(TF.ten_crop(x, crop), dim=x.dim() - 3)
    return TF.center_crop(x, crop)


def eval_image(
    img, resize: int, crop: int, ten_crop: bool, interpolation: str = "bilinear"
) -> Tensor:
    """`eval_views` of one PIL image or uint8 tensor (for DataLoader workers)."""
    x = img if isinstance(img, Tensor) else image_tensor(img)
    return eval_views(x, resize, crop, ten_crop, interpolation)


def eval_batch(
    x: Tensor, resize: int, crop: int, ten_crop: bool, interpolation: str = "bilinear"
) -> Tensor:
    """`eval_views` of a whole uint8 batch: (N, C, h, w), or (N, 10, C, h, w) with ten-crop."""
    return eval_views(x, resize, crop, ten_crop, interpolation)


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
