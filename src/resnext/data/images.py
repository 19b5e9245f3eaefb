"""Image files to pixels: the one decoder every reader of images goes through.

`decode_image` turns any file PIL opens into the channel count a model takes, so that a grey
model takes colour photos and a colour model takes grey scans, and so that 16-bit files keep
their picture (PIL's `convert("RGB")` clips 16-bit values at 255: an all-white image).

Speed (benchmarks/feed.py): an image already in the wanted mode is not copied (a copy of a fresh
1280x854 image cost 4 ms on this project's CPU, mostly page faults, against 3 ms to decode it),
and a caller that will shrink the image anyway may let a JPEG decode at 1/2, 1/4 or 1/8 scale
(libjpeg's DCT-domain scaling, PIL's draft mode): 2.8 instead of 8.1 ms for that image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from resnext.errors import one_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_MODES = {1: "L", 3: "RGB"}
# Integer modes wider than 8 bits and the factor that scales their full range to 0..255.
# PNG stores 16 bits at most, and PIL opens 16-bit grey PNGs as "I;16" or (older PIL) "I".
_WIDE = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0}
# The most pixels an image may have before it is a bad image ("pixel bomb"): read from the
# header before decoding. 50 million (e.g. 8660 x 5773) decodes to 150 MB of RGB; a 12000 x
# 12000 PNG of one colour is 168 KB on disk and 432 MB decoded. PIL refuses above 179 million
# (2 x Image.MAX_IMAGE_PIXELS) whatever this says.
MAX_PIXELS = 50_000_000
# EXIF orientations that swap width and height (rotations by 90 degrees, transposes).
_SWAPPED = {5, 6, 7, 8}
_ORIENTATION = 0x0112


def decode_image(
    source: str | os.PathLike | IO[bytes],
    channels: int,
    *,
    reduce: Callable[[int, int], int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode an image file into a PIL image of `channels` channels (1: mode "L", 3: "RGB").

    `reduce(width, height)`, if given, is called with the upright full size before decoding and
    returns the factor (1, 2, 4 or 8) by which the caller allows the image to come out smaller;
    JPEGs then decode at the largest scale 1/2^k within it, other formats in full. The factor
    applied is `image.info["scale"]`: pixel (x, y) of the full image is (x / scale, y / scale).

    The contract every caller (training folders, evaluate, predict) relies on:
    - colour is converted to grey with ITU-R 601 luma, grey to colour by repeating it;
    - 16-bit and 32-bit integer images are scaled by their bit depth to 8 bits (65535 -> 255),
      float images from [0, 1] (or [0, 255] when larger); never clipped to white;
    - palette, RGBA, LA, CMYK, YCbCr and 1-bit images are converted; alpha is dropped, as
      torchvision's and timm's readers drop it, so a file gives the same pixels everywhere;
    - the EXIF orientation of photos is applied (a phone photo is not read sideways);
    - the first frame of an animation is used; the image is fully read, the file closed.

    Raises:
        OSError: a missing, unreadable, truncated or non-image file.
        ValueError: more than `max_pixels` pixels (from the header, before decoding), a
            decompression bomb, an unsupported mode or channel count.
    """
    if channels not in _MODES:
        raise ValueError(f"images decode to 1 or 3 channels, not {channels}")
    try:
        with open_image(source) as im:
            reason = over_pixel_limit(im.size, max_pixels)
            if reason is not None:
                raise ValueError(reason)
            scale = _draft(im, reduce) if reduce is not None else 1
            im = ImageOps.exif_transpose(im, in_place=True) or im  # in place: no copy
            out = _convert(im, _MODES[channels])
            out.info["scale"] = scale
            return out
    except (SyntaxError, Image.DecompressionBombError) as e:  # PIL's odd ones out
        raise ValueError(f"cannot decode {_name(source)}: {e}") from None


def open_image(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """PIL's lazy open (the header only), without its warning on large images: `max_pixels`
    is the limit here, and its message one line; a file of no image format says so without
    PIL's repr of the object it read (a memory address for an in-memory file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.UnidentifiedImageError:  # PIL's text names the object: an address
            raise Image.UnidentifiedImageError("not an image file PIL can identify") from None


def over_pixel_limit(size: tuple[int, int], max_pixels: int) -> str | None:
    """Why an image of `size` (width, height) is a pixel bomb, or None."""
    pixels = size[0] * size[1]
    if pixels <= max_pixels:
        return None
    return f"{size[0]}x{size[1]} px ({pixels:,} pixels) is over the limit of {max_pixels:,} (max_pixels)"


def _draft(im: Image.Image, reduce: Callable[[int, int], int]) -> int:
    """Ask `reduce` for the allowed factor; decode a JPEG at the largest 1/2^k scale within it."""
    width, height = im.size
    if im.getexif().get(_ORIENTATION) in _SWAPPED:
        width, height = height, width
    allowed = reduce(width, height)
    scale = max((s for s in (8, 4, 2) if s <= allowed), default=1)
    if scale == 1 or im.format != "JPEG" or im.mode not in ("RGB", "L"):
        return 1
    # PIL picks the largest scale whose image is at least the size asked; it then holds
    # ceil(size / scale) pixels.
    full = im.size
    im.draft(im.mode, (max(full[0] // scale, 1), max(full[1] // scale, 1)))
    return round(full[0] / im.size[0])


def _name(source: str | os.PathLike | IO[bytes]) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "image"


def _convert(im: Image.Image, mode: str) -> Image.Image:
    """`im` in `mode` ("L" or "RGB"), scaling wide integer and float pixels to 8 bits first."""
    if im.mode in _WIDE or im.mode == "F":
        im = Image.fromarray(_to_uint8(np.asarray(im), im.mode))
    elif im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns on palette -> RGB with transparency
    if im.mode == mode:
        im.load()
        return im
    try:
        out = im.convert(mode)
    except ValueError:  # PIL converts some modes (LAB) to RGB only
        try:
            out = im.convert("RGB").convert(mode)
        except ValueError:
            raise ValueError(f"unsupported image mode {im.mode}") from None
    out.load()
    return out


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Wide grey pixels to uint8: integers by their bit depth, floats by their range."""
    x = arr.astype(np.float64)
    if mode == "F":
        x = x * 255.0 if x.size and x.max() <= 1.0 else x
    elif mode == "I" and x.size and x.max() > 65535:  # a true 32-bit image (TIFF): its range
        x = x * (255.0 / x.max())
    else:
        x = x / _WIDE[mode]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def image_tensor(image: Image.Image) -> Tensor:
    """A decoded PIL image as a uint8 (C, H, W) tensor, in channels-last memory (PIL's own
    layout: torchvision's uint8 resize is fastest on it).

    The array is copied once more to be writable: torch warns on a read-only one, and building
    that warning (a formatted Python stack) cost 0.4 ms per image, more than the copy.
    """
    arr = np.array(image, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1)


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus image files found (recursively, sorted) in folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    return found


def batched_images(
    paths: Sequence[Path], transform: Callable[[Image.Image], Tensor], channels: int, batch: int
) -> Iterator[tuple[list[Path], Tensor | None, dict[Path, str]]]:
    """Batches of (paths, tensors of the readable ones in order, {unreadable path: reason})."""
    for start in range(0, len(paths), batch):
        chunk = list(paths[start : start + batch])
        tensors, failed = [], {}
        for path in chunk:
            try:
                tensors.append(transform(decode_image(path, channels)))
            except (OSError, ValueError) as e:  # missing, truncated, not an image
                failed[path] = one_line(e)
        yield chunk, (torch.stack(tensors) if tensors else None), failed
