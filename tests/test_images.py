"""The one conversion rule, case by case (formats, modes, sizes, transparency, orientation, bad input)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from image_classifier.errors import ImageError
from image_classifier.images import conversion_settings, decode_image
from tests.serving.conftest import png_declaring

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # height x width x channel, as PIL wants it


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def chw(hwc: np.ndarray) -> np.ndarray:
    return hwc.transpose(2, 0, 1)


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True})])
def test_a_32x32_rgb_image_keeps_its_exact_pixels(fmt, options):
    decoded = decode_image(encode(Image.fromarray(RGB), fmt, **options))
    assert decoded.dtype == np.uint8 and decoded.shape == (3, 32, 32)
    np.testing.assert_array_equal(decoded, chw(RGB))


def test_jpeg_and_gif_decode_as_pillow_decodes_them():
    jpeg = encode(Image.fromarray(RGB), "JPEG", quality=90)
    np.testing.assert_array_equal(decode_image(jpeg), chw(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))))
    few_colours = (RGB // 64) * 64  # at most 64 colours: a GIF palette holds them exactly
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(few_colours), "GIF")), chw(few_colours))


def test_grey_becomes_three_equal_channels():
    grey = RGB[:, :, 0]
    decoded = decode_image(encode(Image.fromarray(grey), "PNG"))
    for channel in decoded:
        np.testing.assert_array_equal(channel, grey)


def sixteen_bit_rgb_png(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one), from big-endian height x width x 3 values."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_sixteen_bit_images_keep_their_high_byte_in_colour_and_in_grey():
    values = RNG.integers(0, 65536, (32, 32, 3)).astype(np.uint16)
    np.testing.assert_array_equal(decode_image(sixteen_bit_rgb_png(values)), chw((values >> 8).astype(np.uint8)))
    grey = Image.fromarray(values[:, :, 0])
    assert grey.mode.startswith("I;16")
    decoded = decode_image(encode(grey, "PNG"))
    for channel in decoded:
        np.testing.assert_array_equal(channel, values[:, :, 0] >> 8)
    # An 8-bit image scaled to 16 bits (v * 257) comes back exactly.
    scaled = Image.fromarray(RGB[:, :, 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(
        decode_image(encode(scaled, "PNG")), decode_image(encode(Image.fromarray(RGB[:, :, 0]), "PNG"))
    )


def test_transparency_is_composited_over_white():
    rgba = np.dstack([RGB, np.zeros((32, 32), np.uint8)])
    rgba[:16, :, 3] = 255  # top half opaque, bottom half fully transparent
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(decoded[:, :16], chw(RGB)[:, :16])
    assert (decoded[:, 16:] == 255).all()
    half = np.dstack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32), 128, np.uint8)])
    assert (np.abs(decode_image(encode(Image.fromarray(half), "PNG")).astype(int) - 127) <= 1).all()


def test_a_transparent_palette_entry_becomes_white():
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    palette.paste(1, (0, 0, 32, 16))
    decoded = decode_image(encode(palette, "PNG", transparency=0))
    assert (decoded[:, :16] == np.array([200, 100, 50])[:, None, None]).all()
    assert (decoded[:, 16:] == 255).all()


def test_other_sizes_are_resized_with_bicubic_without_cropping():
    big = RNG.integers(0, 256, (100, 60, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(big), "PNG")), chw(expected))


def test_the_exif_orientation_is_applied():
    left_dark = np.zeros((32, 32, 3), np.uint8)
    left_dark[:, 16:] = 255
    image = Image.fromarray(left_dark)
    exif = image.getexif()
    exif[0x0112] = 3  # rotated 180 degrees: shown with the dark half on the right
    decoded = decode_image(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded[:, :, :12].mean() > 200 and decoded[:, :, 20:].mean() < 50


@pytest.mark.parametrize(
    "payload, status, message",
    [
        (b"", 400, "empty image"),
        (b"plain text, not an image", 415, "not an image"),
        (encode(Image.fromarray(RGB), "PNG")[:300], 400, "truncated or corrupt"),
        (encode(Image.fromarray(RGB), "TIFF"), 415, "not an image in a supported format"),
        (png_declaring(7_000, 7_000), 413, "49,000,000 pixels, more than the limit of 36,000,000"),
        (png_declaring(40_000, 40_000), 413, "image too large"),
    ],
)
def test_bad_input_is_an_image_error_with_its_status(payload, status, message):
    with pytest.raises(ImageError) as error:
        decode_image(payload)
    assert error.value.status == status
    assert message in str(error.value)


def test_the_pixel_limit_is_a_setting():
    with pytest.raises(ImageError, match="more than the limit of 1,023"):
        decode_image(encode(Image.fromarray(RGB), "PNG"), max_pixels=1023)


@pytest.mark.parametrize("image_size", [8, 24, 64])
def test_the_image_size_is_a_setting_of_the_same_rule(image_size):
    big = RNG.integers(0, 256, (100, 60, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(big).resize((image_size, image_size), Image.Resampling.BICUBIC))
    decoded = decode_image(encode(Image.fromarray(big), "PNG"), image_size=image_size)
    np.testing.assert_array_equal(decoded, chw(resized))
    exact = RNG.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)  # already that size: untouched
    np.testing.assert_array_equal(
        decode_image(encode(Image.fromarray(exact), "PNG"), image_size=image_size), chw(exact)
    )


def test_the_default_size_is_cifars_and_the_settings_name_what_the_pixels_depend_on():
    assert decode_image(encode(Image.fromarray(RGB), "PNG")).shape == (3, 32, 32)
    settings = conversion_settings(48)
    assert settings["image_size"] == 48 and settings["max_pixels"] == 36_000_000
    assert {"rule_version", "resampling", "pillow"} <= settings.keys()
