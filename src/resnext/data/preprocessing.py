"""How images become model inputs at evaluation: one typed record, saved with every model file.

Wrong preprocessing is the usual reason ported weights score near 0%, so a model file carries
its own, and evaluate, predict, export's check and torch.hub all build their transform from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import Tensor

from resnext.data.images import image_tensor

# The ImageNet RGB statistics every ImageNet recipe and import uses (torchvision, timm, pycls).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)


@dataclass(frozen=True)
class Preprocessing:
    """Shorter side to `resize` (`interpolation`), centre crop `crop`, scale to [0, 1], then
    `(x - mean) / std` per channel, for a model taking `channels` (1 grey, 3 RGB) channels."""

    resize: int
    crop: int
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for name in ("resize", "crop", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocessing {name} must be a positive integer, got {value!r}")
        if self.resize < self.crop:
            raise ValueError(f"preprocessing resize {self.resize} is smaller than crop {self.crop}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; use {', '.join(INTERPOLATIONS)}"
            )
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(
                f"preprocessing mean/std have {len(self.mean)}/{len(self.std)} values "
                f"for {self.channels} channels"
            )
        if min(self.std) <= 0:
            raise ValueError(f"preprocessing std must be positive, got {list(self.std)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON, `torch.load(weights_only=True)`)."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], channels: int | None = None) -> Preprocessing:
        """Read `to_dict`'s output; files written before `channels` existed take `channels`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; expected {sorted(known)}")
        values = dict(d)
        if "channels" not in values:
            values["channels"] = channels if channels is not None else len(values.get("mean", ()))
        try:
            return cls(**values)
        except TypeError as e:  # a required key missing
            raise ValueError(f"incomplete preprocessing {dict(d)}: {e}") from None

    def with_view(self, resize: int | None = None, crop: int | None = None) -> Preprocessing:
        """Another evaluation size (e.g. Table 5's 320 crop): `resize` defaults to the crop."""
        if resize is None and crop is None:
            return self
        if resize is None:
            resize = crop
        return dataclasses.replace(self, resize=resize, crop=crop or self.crop)

    def views(self, x: Tensor, ten_crop: bool = False) -> Tensor:
        """uint8 image (C, H, W) or batch (N, C, H, W) -> normalised float views at `crop`.

        With `ten_crop`, the views gain a dimension of 10 after the batch one.
        """
        if x.shape[-3] != self.channels:
            raise ValueError(f"images have {x.shape[-3]} channels; the model takes {self.channels}")
        # Imported here: torchvision's transforms cost ~2 s of start-up to every `resnext`
        # command, and most never build a view.
        from resnext.data.transforms import eval_views, normalize

        v = eval_views(x, self.resize, self.crop, ten_crop, self.interpolation)
        return normalize(v, self.mean, self.std)

    def contract(self) -> str:
        """What a client must do to an image, in words: stored in every exported file ("input")
        and followed by docs/onnx_client.py (Pillow's resize gives the same pixels within the
        tolerance tests/test_int8.py states)."""
        colour = "RGB" if self.channels == 3 else "grey (ITU-R 601 luma, PIL mode L)"
        antialias = "" if self.interpolation == "nearest" else ", antialiased"
        return (
            f"decode the image, apply its EXIF orientation, convert to {colour} (alpha dropped); "
            f"resize so the shorter side is {self.resize} px ({self.interpolation}{antialias}, "
            f"as PIL's Image.resize; the longer side rounded down; skipped if already {self.resize}); "
            f"centre crop {self.crop}x{self.crop} (offset round((side - {self.crop}) / 2), halves to even); "
            f"scale to [0, 1] (divide by 255); subtract mean {list(self.mean)} and divide by "
            f"std {list(self.std)} per channel; float32, NCHW, input 'x'; output 'logits' "
            "(softmax for probabilities)"
        )

    def transform(self):
        """The evaluation transform: a decoded PIL image (or uint8 tensor) -> input tensor."""
        return EvalTransform(self)


@dataclass(frozen=True)
class EvalTransform:
    """`Preprocessing.views` of one image; a picklable callable for DataLoader workers."""

    pre: Preprocessing

    def __call__(self, image: Any) -> Tensor:
        x = image if isinstance(image, Tensor) else image_tensor(image)
        return self.pre.views(x)
