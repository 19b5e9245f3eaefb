"""The photometric stage of ImageNet training, on a whole uint8 batch where it sits (the GPU when
there is one): colour jitter as torchvision's ColorJitter draws and applies it per image, AlexNet's
PCA lighting noise, normalisation; drawn for a batch from one generator, so a step's draws are a
function of (seed, epoch, step) (batches.py) and resume replays them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# PCA of ImageNet RGB pixels (AlexNet's lighting noise; fb.resnet.torch, which the paper used).
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


@dataclass
class Photometric:
    """Colour jitter and PCA lighting drawn for n images: factors (n, 3) for brightness,
    contrast and saturation, the order (n, 3) they apply in, lighting offsets (n, 3) in RGB."""

    factors: Tensor
    order: Tensor
    light: Tensor

    def __getitem__(self, i: Tensor | slice) -> Photometric:
        return Photometric(self.factors[i], self.order[i], self.light[i])


def draw_photometric(n: int, jitter: float, lighting: float, gen: torch.Generator) -> Photometric:
    """As torchvision's ColorJitter(jitter, jitter, jitter) draws per image (each factor
    uniform in [max(0, 1 - jitter), 1 + jitter], the three in a uniformly random order) and as
    AlexNet's lighting noise (offset EIGVEC @ (N(0, lighting^2) * EIGVAL))."""
    low = max(0.0, 1.0 - jitter)
    factors = low + (1.0 + jitter - low) * torch.rand(n, 3, generator=gen)
    order = torch.rand(n, 3, generator=gen).argsort(1)
    light = (torch.randn(n, 3, generator=gen) * lighting * EIGVAL) @ EIGVEC.T
    return Photometric(factors, order, light)


# torchvision's rgb_to_grayscale weights (ITU-R 601), which its adjust_contrast and
# adjust_saturation blend towards.
_GREY = (0.2989, 0.587, 0.114)
# Images per chunk on the CPU: the in-place passes of a few images stay in cache. Fresh memory is
# dear on this project's CPU (page faults: converting 64 images to float cost 0.32 ms an image),
# so the batch is converted once and every later pass works in place.
_CPU_CHUNK = 4


def photometric(
    x: Tensor, p: Photometric, jitter: bool, lighting: bool,
    mean: Sequence[float], std: Sequence[float],
) -> Tensor:  # fmt: skip
    """uint8 batch (N, C, H, W) -> jittered, lit, normalised float, where the batch sits.

    Each jitter op is torchvision's on float images: a blend of the image with a degenerate one
    (black, the mean grey, the grey image), clamped to the pixel range; image i takes them in the
    order p.order[i]. Grey (1-channel) images take brightness and contrast only, no lighting.
    Pixels stay in [0, 255] until the last step, which lights and normalises in one pass.
    """
    out = x.float()
    m = torch.tensor(mean, device=out.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=out.device).view(1, -1, 1, 1) * 255
    shift = -m.expand(len(out), -1, -1, -1)
    if lighting and out.shape[1] == 3:
        shift = p.light.to(out.device).view(-1, 3, 1, 1) * 255 - m
    factors, order = p.factors.to(out.device), p.order.to(out.device)
    step = _CPU_CHUNK if out.device.type == "cpu" else len(out)
    for i in range(0, len(out), step):
        part = out[i : i + step]
        if jitter:
            _jitter_(part, factors[i : i + step], order[i : i + step])
        part.add_(shift[i : i + step]).div_(s)
    return out


def _jitter_(x: Tensor, factors: Tensor, order: Tensor) -> None:
    """Brightness, contrast and saturation in place on [0, 255] floats, the k-th op of every
    image at once."""
    for k in range(3):
        op = order[:, k]
        f = factors.gather(1, op[:, None]).view(-1, 1, 1, 1)
        if x.shape[1] == 3:
            grey = torch.mul(x[:, :1], _GREY[0])
            grey.add_(x[:, 1:2], alpha=_GREY[1]).add_(x[:, 2:3], alpha=_GREY[2])
        else:  # saturation leaves a grey image as it is
            grey, f = x, torch.where((op == 2).view(-1, 1, 1, 1), 1.0, f)
        level = torch.where(op == 1, grey.mean((1, 2, 3)), 0.0).view(-1, 1, 1, 1)
        if x.shape[1] == 3:  # black (brightness) or the mean grey (contrast), else grey
            degenerate = torch.where((op == 2).view(-1, 1, 1, 1), grey, level)
        else:
            degenerate = level
        torch.lerp(degenerate, x, f, out=x).clamp_(0, 255)
