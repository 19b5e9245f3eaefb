"""decode_image: every image mode to the model's channel count, 16-bit files scaled, not clipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from resnext.data.images import decode_image, image_tensor


def saved(image: Image.Image, fmt: str = "PNG", **kw) -> io.BytesIO:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def ramp16() -> np.ndarray:
    return (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_16_bit_png_is_scaled_by_its_bit_depth(channels, mode):
    img = decode_image(saved(Image.fromarray(ramp16())), channels)
    assert img.mode == mode
    got = np.asarray(img.convert("L"), dtype=np.int64)
    want = np.rint(ramp16() / 257)
    assert np.abs(got - want).max() <= 1  # PIL's convert("RGB") would clip to 255 (white)
    assert got.max() == 245 and got.min() == 0


def test_big_endian_16_bit_and_32_bit_integer_images():
    big = Image.frombytes("I;16B", (8, 8), ramp16().astype(">u2").tobytes())
    assert np.asarray(decode_image(saved(big, "TIFF"), 1)).max() == 245
    wide = Image.fromarray(ramp16().astype(np.int32))  # mode "I", values up to 63000
    assert np.asarray(decode_image(saved(wide, "TIFF"), 1)).max() == 245


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("RGBA", (6, 4), (250, 10, 10, 0)), "PNG"),
        (Image.new("LA", (6, 4), (120, 30)), "PNG"),
        (Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "JPEG"),
        (Image.new("1", (6, 4), 1), "PNG"),
        (Image.new("RGB", (6, 4), (250, 10, 10)).quantize(8), "PNG"),
        (Image.new("F", (6, 4), 0.5), "TIFF"),
    ],
    ids=["rgba", "la", "cmyk", "1-bit", "palette", "float"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_to_the_channels_asked(image, fmt, channels):
    img = decode_image(saved(image, fmt), channels)
    x = image_tensor(img)
    assert x.shape == (channels, 4, 6) and x.dtype.is_floating_point is False
    assert 0 < int(x.max()) <= 255  # never all black: every test image has light pixels


def test_palette_with_transparency_and_colour_to_grey():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    buf = saved(pal, transparency=0)
    assert decode_image(buf, 3).getpixel((0, 0)) == (200, 100, 50)
    grey = decode_image(saved(Image.new("RGB", (2, 2), (200, 100, 50))), 1)
    assert grey.getpixel((0, 0)) == round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (6, 4), (10, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_image(saved(img, "JPEG", exif=exif), 3).size == (4, 6)


def test_bad_files_and_channel_counts_raise_the_documented_errors(tmp_path):
    (tmp_path / "t.png").write_text("no picture")
    with pytest.raises(OSError):
        decode_image(tmp_path / "t.png", 3)
    with pytest.raises(OSError):
        decode_image(tmp_path / "missing.png", 3)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        decode_image(saved(Image.new("RGB", (2, 2))), 2)
