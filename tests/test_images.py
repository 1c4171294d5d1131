"""The one conversion rule, case by case (formats, modes, sizes, transparency, orientation, bad input)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

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


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(values: np.ndarray, bits: int = 16, transparent: tuple[int, ...] | None = None) -> bytes:
    """A PNG written by hand (Pillow writes neither 16-bit colour nor tRNS at these depths): grey from
    height x width values, RGB from height x width x 3, at 16 bits or, for grey, packed at 1, 2 or 4 bits."""
    height, width = values.shape[:2]
    colour = 2 if values.ndim == 3 else 0
    if bits == 16:
        rows = [values[y].astype(">u2").tobytes() for y in range(height)]
    else:
        rows = [
            np.packbits(np.unpackbits(values[y].astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]).tobytes()
            for y in range(height)
        ]
    header = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    extra = chunk(b"tRNS", struct.pack(f">{len(transparent)}H", *transparent)) if transparent else b""
    data = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def sixteen_bit_rgb_png(values: np.ndarray) -> bytes:
    return png_of(values)


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
        # Past Pillow's own bomb limit (179 M) the error still names ours.
        (png_declaring(40_000, 40_000), 413, "image too large: it declares more than the limit of 36,000,000"),
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


def test_the_trns_colour_of_a_16_bit_png_is_compared_on_all_16_bits_and_composited():
    """Pillow reduces 16-bit pixels to their high byte but keeps the tRNS colour at 16 bits: compared as it
    is, (3, 7, 11) would make the reduced pixels (3, 7, 11) - really (1000, 2000, 3000) - transparent."""
    values = RNG.integers(0, 65536, (32, 32, 3)).astype(np.uint16)
    key = (1000, 2000, 3000)
    values[0, :] = key
    values[1, :] = (1000, 2000, 3001)  # the same high bytes, another colour
    values[2, :] = (3, 7, 11)  # the key's 16-bit values read as if they were 8-bit ones
    decoded = decode_image(png_of(values, transparent=key))
    assert (decoded[:, 0] == 255).all()
    expected = chw((values >> 8).astype(np.uint8))
    np.testing.assert_array_equal(decoded[:, 1:], expected[:, 1:])


def test_the_trns_value_of_16_bit_grey_is_composited():
    values = RNG.integers(0, 65536, (32, 32)).astype(np.uint16)
    values[:8] = 1000
    values[8:16] = 1001  # the same high byte
    decoded = decode_image(png_of(values, transparent=(1000,)))
    assert (decoded[:, :8] == 255).all()
    for channel in decoded:
        np.testing.assert_array_equal(channel[8:], (values[8:] >> 8).astype(np.uint8))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_the_trns_value_of_grey_below_8_bits_is_composited(bits):
    """Pillow scales 2- and 4-bit grey to 0-255 (v * 85, v * 17) but not their tRNS value."""
    top = 2**bits - 1
    values = RNG.integers(0, top + 1, (32, 32)).astype(np.uint8)
    values[:4] = 1
    values[4:8] = 0
    decoded = decode_image(png_of(values, bits=bits, transparent=(1,)))
    assert (decoded[:, :4] == 255).all()
    opaque = values[4:] != 1
    for channel in decoded:
        np.testing.assert_array_equal(channel[4:][opaque], (values[4:][opaque] * (255 // top)).astype(np.uint8))


def test_grey_is_resized_exactly_as_its_rgb_copy():
    """Grey is resized before it becomes RGB (a quarter of the memory): the same pixels as the other way."""
    for shape in ((100, 60), (7, 33), (31, 32), (300, 301)):
        grey = RNG.integers(0, 256, shape, dtype=np.uint8)
        as_rgb = np.dstack([grey] * 3)
        np.testing.assert_array_equal(
            decode_image(encode(Image.fromarray(grey), "PNG")), decode_image(encode(Image.fromarray(as_rgb), "PNG"))
        )


def test_sixteen_bit_grey_is_reduced_without_a_full_size_copy_wider_than_its_pixels():
    """No 64-bit (nor 16-bit) copy of the whole image: numpy's allocations, which tracemalloc sees, stay
    far below one byte per pixel."""
    import tracemalloc

    side = 2000
    payload = encode(Image.fromarray(RNG.integers(0, 65536, (side, side)).astype(np.uint16)), "PNG")
    tracemalloc.start()
    try:
        decode_image(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < side * side, f"{peak:,} bytes of Python/numpy allocations for {side * side:,} pixels"


MEASURE_PEAK = r"""
import sys
from image_classifier import images

def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) * 1024

image = images.open_image(open(sys.argv[1], "rb").read())
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM, the peak resident memory
before = status("VmRSS")
images.convert_image(image)
print((status("VmHWM") - before) / (image.size[0] * image.size[1]))
"""


def test_converting_holds_at_most_8_bytes_per_declared_pixel_16_for_webp(tmp_path):
    """The README's bound per decode, measured as the peak resident memory of a process converting a 4 MP
    image of each kind that takes another path (bytes per declared pixel; one process each, so that memory
    freed by one conversion cannot hide the next one's)."""
    import subprocess
    import sys

    y, x = np.indices((2000, 2000))
    pattern = ((x + y) % 256).astype(np.uint8)  # compresses well: the files stay small, the pixels do not
    rgb = Image.fromarray(np.dstack([pattern] * 3))
    rotated = rgb.getexif()
    rotated[0x0112] = 6
    rgba = Image.fromarray(np.dstack([pattern] * 4))
    kinds = {
        "rgb.png": encode(rgb, "PNG", compress_level=1),
        "grey.png": encode(Image.fromarray(pattern), "PNG", compress_level=1),
        "rgba.png": encode(rgba, "PNG", compress_level=1),
        "la.png": encode(rgba.convert("LA"), "PNG", compress_level=1),
        "palette-trns.png": encode(Image.fromarray(pattern).convert("P"), "PNG", transparency=3, compress_level=1),
        "grey16.png": encode(Image.fromarray(pattern.astype(np.uint16) * 257), "PNG", compress_level=1),
        "rgb16-trns.png": png_of(np.dstack([pattern.astype(np.uint16) * 257] * 3), transparent=(0, 0, 0)),
        "rotated.jpg": encode(rgb, "JPEG", exif=rotated.tobytes()),
        "rgba.webp": encode(rgba, "WEBP", lossless=True, quality=0, method=0),
    }
    peaks = {}
    for name, payload in kinds.items():
        (tmp_path / name).write_bytes(payload)
        run = subprocess.run(
            [sys.executable, "-c", MEASURE_PEAK, str(tmp_path / name)], capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr
        peaks[name] = float(run.stdout)
    for name, bytes_per_pixel in peaks.items():
        bound = 16 if name.endswith(".webp") else 8
        assert bytes_per_pixel < bound + 0.5, peaks  # the margin: the allocator's own bookkeeping


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


def exif_block(entries: list[tuple[int, int, int, int | bytes]]) -> bytes:
    """A little-endian EXIF block, byte by byte: (tag, TIFF type, count, inline SHORT or out-of-line bytes)."""
    data_at = 8 + 2 + 12 * len(entries) + 4
    directory, values = b"", b""
    for tag, kind, count, value in entries:
        if isinstance(value, bytes):
            directory += struct.pack("<HHII", tag, kind, count, data_at + len(values))
            values += value
        else:
            directory += struct.pack("<HHIHH", tag, kind, count, value, 0)
    header = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    return b"Exif\0\0" + header + directory + b"\0\0\0\0" + values


ORIENTATION, SHORT, ASCII, RATIONAL = 0x0112, 3, 2, 5
# Orientation 6 (turn 90 degrees clockwise) beside a tag of the wrong TIFF type: Software (ASCII) stored as a
# RATIONAL, XResolution (RATIONAL) stored as ASCII. Pillow reads such a block; writing it back raises.
MISTYPED_EXIF = {
    "Software as a number": exif_block([(ORIENTATION, SHORT, 1, 6), (0x0131, RATIONAL, 1, struct.pack("<II", 1, 3))]),
    "XResolution as text": exif_block([(ORIENTATION, SHORT, 1, 6), (0x011A, ASCII, 4, b"abc\0")]),
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("exif", MISTYPED_EXIF.values(), ids=MISTYPED_EXIF.keys())
def test_a_mistyped_exif_tag_beside_the_orientation_still_turns_the_image(fmt, exif):
    """A camera's or editor's mistyped tag made the conversion raise TypeError/AttributeError (a crash of the
    whole preparation, a 500 from the service); the pixels are fine and the orientation is readable."""
    wide = RNG.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    payload = encode(Image.fromarray(wide), fmt, exif=exif, **options)
    plain = Image.open(io.BytesIO(encode(Image.fromarray(wide), fmt, **options))).convert("RGB")
    expected = np.asarray(plain.transpose(Image.Transpose.ROTATE_270).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode_image(payload), chw(expected))


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_orientation_outside_one_to_eight_leaves_the_image_as_it_is(orientation):
    payload = encode(Image.fromarray(RGB), "PNG", exif=exif_block([(ORIENTATION, SHORT, 1, orientation)]))
    np.testing.assert_array_equal(decode_image(payload), chw(RGB))


@pytest.mark.parametrize("error", [IndexError, TypeError, struct.error, ZeroDivisionError])
def test_any_other_exception_pillow_raises_on_the_bytes_is_a_bad_image(monkeypatch, error):
    """Pillow's plugins have raised all of these on crafted files: a bad image (400), never a crash."""

    payload = encode(Image.fromarray(RGB), "PNG")

    def broken(self):
        raise error("crafted")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)  # where a plugin decodes the pixels
    with pytest.raises(ImageError, match=f"cannot be decoded .*{error.__name__}") as raised:
        decode_image(payload)
    assert raised.value.status == 400


def test_running_out_of_memory_is_not_called_a_bad_image(monkeypatch):
    payload = encode(Image.fromarray(RGB), "PNG")

    def exhausted(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    with pytest.raises(MemoryError):
        decode_image(payload)
