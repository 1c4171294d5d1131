"""Turn an image file's bytes into the model's input: uint8 3 x S x S, R, G, B, as CIFAR-10 stores it.

S is the image size, 32 by default (CIFAR-10's); training on an image folder (`--image_size`) and serving
the model it gives both convert with this module, at the size the run recorded.

The one conversion rule (docs/training.md, "Image conversion", states it too):
1. only PNG, JPEG, BMP, GIF and WebP are decoded (the first frame of an animation); the declared size is
   checked against a pixel limit *before* any pixel is decoded, so a small file that declares a huge image
   (a decompression bomb) is refused without using the memory; a truncated file is an error, never padded;
2. the EXIF orientation, when there is one, is applied (a phone photo is upright, as it is shown); EXIF that
   cannot be read (or whose orientation is no valid number) turns nothing: only the pixels decide whether an
   image is good, and the rest of the EXIF block is neither checked nor rewritten;
3. 16-bit images keep their high byte, v >> 8: that is what Pillow does with 16-bit colour PNGs as it reads
   them, and 16-bit grey follows the same rule (an 8-bit image scaled to 16 bits, v8 * 257, gets v8 back);
4. transparency (an alpha channel, a transparent palette entry, or a PNG's tRNS colour, compared at the
   file's own bit depth: all 16 bits of a 16-bit PNG) is composited over white;
5. the result is RGB; anything but S x S is resized to S x S with Pillow's BICUBIC filter (which
   antialiases when shrinking), stretching rather than cropping, so the whole picture is seen;
6. then the training normalisation, `preprocess`, is applied to the batch by the model code.
An S x S RGB image without transparency skips steps 3-5: its pixels are exactly the training data's.

Memory: converting holds the decoded image and at most one more full-size image of at most 4 bytes a pixel
(8 bytes per declared pixel in all), plus what the decoder itself holds while it runs (Pillow's WebP decoder
about 8 bytes a pixel more); each image is released as soon as the next step has its pixels.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import PIL
from PIL import ExifTags, Image, ImageChops, UnidentifiedImageError

from image_classifier.errors import ImageError

DEFAULT_IMAGE_SIZE = 32  # CIFAR-10's, and the notebook model's
# Bumped whenever the rule below changes what any input converts to: prepared datasets are keyed by it.
RULE_VERSION = 1
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# 36 megapixels: a 6000 x 6000 photo decodes (about 150 MB at 4 bytes a pixel); a bomb declaring more does not.
DEFAULT_MAX_PIXELS = 36_000_000
RESAMPLING = Image.Resampling.BICUBIC
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# 16-bit pixels are reduced a strip of about this many pixels at a time, so that no 16- or 32-bit copy of
# the whole image is ever made.
_STRIP_PIXELS = 1 << 18
# PNG rawmodes of grey below 8 bits: Pillow scales the pixels to 0-255 but keeps the tRNS value unscaled.
_SCALED_GREY = {"L;2": 255 // 3, "L;4": 255 // 15}
# EXIF orientation -> the transposition that shows the image upright (ImageOps.exif_transpose's table).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

logger = logging.getLogger(__name__)


def decode_image(
    payload: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, image_size: int = DEFAULT_IMAGE_SIZE
) -> np.ndarray:
    """The model input for one image file's bytes: uint8 3 x S x S. Raises ImageError for bad input."""
    return convert_image(open_image(payload, max_pixels), image_size)


def open_image(payload: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read the header only (format and declared size); refuse what is not an image or too large.

    The header is parsed in Python for most formats, at a cost that grows with the file's size (a PNG may
    hold any number of chunks before its pixels): a service calls this off its event loop.
    """
    if not payload:
        raise ImageError("empty image: no bytes were sent")
    return _open(payload, max_pixels)


def convert_image(image: Image.Image, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode the pixels of an opened image and convert them per the module's rule: uint8 3 x S x S.

    Takes the image over: it is closed (its pixels released) before this returns, whatever happens.
    """
    try:
        rgb = _to_rgb(image, (image_size, image_size))
        try:
            return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
        finally:
            rgb.close()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}", status=413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a truncated or corrupt stream as OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError, only when the pixels are decoded.
        raise ImageError(f"the image cannot be decoded (truncated or corrupt): {_first_line(exc)}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _unexpected
        raise _unexpected(exc, "decoded") from None
    finally:
        image.close()


def conversion_settings(image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """What the rule's output depends on besides the bytes: recorded with, and keying, prepared data."""
    return {
        "rule_version": RULE_VERSION,
        "image_size": image_size,
        "resampling": RESAMPLING.name,
        "max_pixels": max_pixels,
        "pillow": PIL.__version__,  # another Pillow (and its codecs) may decode JPEG differently
    }


def declared_pixels(image: Image.Image) -> int:
    width, height = image.size
    return width * height


def _open(payload: bytes, max_pixels: int) -> Image.Image:
    try:
        # Pillow's own bomb check only warns below twice its MAX_IMAGE_PIXELS (89 M); ours, below, is stricter.
        # (warnings.catch_warnings would silence it, but is not thread-safe, and decoding runs in threads.)
        image = Image.open(io.BytesIO(payload), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})", status=415) from None
    except Image.DecompressionBombError:
        # Pillow refuses past twice its own MAX_IMAGE_PIXELS before we see the size: name our limit anyway.
        raise ImageError(
            f"image too large: it declares more than the limit of {max_pixels:,} pixels", status=413
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"the image cannot be read (truncated or corrupt): {_first_line(exc)}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _unexpected
        raise _unexpected(exc, "read") from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageError(f"the image declares an empty size ({width} x {height})")
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            f"image too large: it declares {width} x {height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,}",
            status=413,
        )
    return image


def _to_rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Decode and convert per the module's rule; an RGB image of `size` without transparency is untouched.

    Every step hands on one image and closes the one before, so that at most two full-size images are
    alive at once. Whatever it returns, the caller closes; `image` may be what it returns.
    """
    _scale_low_depth_transparency(image)
    key = _sixteen_bit_rgb_transparency(image)
    low_bytes_match = _low_bytes_match(image, key) if key is not None else None  # before `image` is decoded
    image.load()  # decodes the first frame; raises on a truncated file
    _release_decoder(image)
    if low_bytes_match is not None:
        _composite_key(image, key, low_bytes_match)
    image = _upright(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_grey(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        rgb = image
    elif _has_transparency(image):
        rgb = _over_white(image)
    elif image.mode == "L":
        # Resizing is per channel, so grey resized then copied to three channels is the same as the other way
        # round, at a quarter of the memory.
        rgb = _replace(image, image.resize(size, RESAMPLING) if image.size != size else image)
        return _replace(rgb, rgb.convert("RGB"))
    else:
        rgb = _replace(image, image.convert("RGB"))
    if rgb.size != size:
        rgb = _replace(rgb, rgb.resize(size, RESAMPLING))
    return rgb


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (the same one when there is nothing to turn).

    Not ImageOps.exif_transpose: after turning, it writes the whole EXIF block back without the orientation,
    and a block with one mistyped tag (a camera's or an editor's) makes that raise TypeError, AttributeError or
    struct.error, about metadata the model never sees.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        method = _ORIENTATIONS.get(orientation)
    except Exception as exc:  # noqa: BLE001 - an EXIF block Pillow cannot parse: not the pixels' fault
        logger.debug("EXIF not read (%s): orientation not applied", _first_line(exc))
        return image
    return image if method is None else _replace(image, image.transpose(method))


def _unexpected(exc: Exception, done: str) -> ImageError:
    """Any other exception from Pillow on these bytes: an image file is untrusted input, and Pillow's plugins
    have raised IndexError, TypeError, struct.error... on crafted files. A bad image, never a crash of the
    whole preparation (or a 500)."""
    return ImageError(f"the image cannot be {done} (corrupt): {type(exc).__name__}: {_first_line(exc)}")


def _release_decoder(image: Image.Image) -> None:
    """Once the pixels are in the image, drop what they were decoded from: Pillow keeps it until the image
    object is collected, and for WebP that is a copy of the frame and a decoder holding two full-size
    canvases (12 bytes a pixel)."""
    if image.fp is not None:
        image.fp.close()
    if getattr(image, "_decoder", None) is not None:  # Pillow's WebP plugin; nothing else has one
        image._decoder = None


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """Hand on `new`, releasing the pixels of `old` at once (not when the garbage collector gets to it)."""
    if new is not old:
        old.close()
    return new


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _over_white(image: Image.Image) -> Image.Image:
    """Composite over white, in place: RGBA (one copy, unless it is RGBA already), then RGB (a second)."""
    rgba = image if image.mode == "RGBA" else _replace(image, image.convert("RGBA"))
    alpha = rgba.getchannel("A")
    transparency = _replace(alpha, ImageChops.invert(alpha))
    # White pasted through 255 - alpha gives c * a / 255 + 255 * (1 - a / 255): what alpha_composite over a
    # white image gives, to the bit (checked for every colour and alpha), without that full-size white image.
    rgba.paste(_WHITE, mask=transparency)
    transparency.close()
    return _replace(rgba, rgba.convert("RGB"))


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit grey (the high byte), a strip at a time; its tRNS value, compared on all 16 bits,
    is composited over white like any other transparency."""
    width, height = image.size
    key = image.info.get("transparency")
    grey = Image.new("L", image.size)
    rows = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        strip = image.crop(box)
        values = np.asarray(strip)  # uint16 (I;16 modes) or int32 (mode I), one strip only
        strip.close()
        # The high byte, as Pillow reduces 16-bit colour; mode "I" can hold negative or larger values: clipped.
        high = (np.clip(values, 0, 65535) >> 8) if image.mode == "I" else (values >> 8)
        grey.paste(Image.fromarray(high.astype(np.uint8)), box)
        if isinstance(key, int):
            grey.paste(255, box, mask=Image.fromarray(np.where(values == key, 255, 0).astype(np.uint8)))
    image.close()
    return grey


def _sixteen_bit_rgb_transparency(image: Image.Image) -> tuple[int, int, int] | None:
    """The tRNS colour of a 16-bit RGB PNG, which Pillow keeps at 16 bits while it reduces the pixels to 8:
    compared with the reduced pixels, it would miss the colour it names and hit others. None for any other."""
    key = image.info.get("transparency")
    if image.format != "PNG" or image.mode != "RGB" or not isinstance(key, tuple) or not image.tile:
        return None
    if _rawmode(image.tile[0]) != "RGB;16B":
        return None
    del image.info["transparency"]
    return key


def _low_bytes_match(image: Image.Image, key: tuple[int, int, int]) -> Image.Image:
    """255 where a 16-bit RGB pixel's low bytes equal those of `key`. Pillow gives only the high bytes; the low
    ones come from a second decode of the same file read as little-endian (whose high byte is the file's low
    byte), reduced a strip at a time to this one-byte mask before the first decode's pixels exist."""
    low = _reopen(image, "RGB;16L")
    try:
        low.load()
        return _match(low, np.array([k & 0xFF for k in key], np.uint8))
    finally:
        low.close()


def _composite_key(image: Image.Image, key: tuple[int, int, int], low_bytes_match: Image.Image) -> None:
    """White, in place, where a 16-bit RGB pixel equals `key` on all 16 bits."""
    high_bytes_match = _match(image, np.array([k >> 8 for k in key], np.uint8))
    transparent = _replace(low_bytes_match, ImageChops.multiply(low_bytes_match, high_bytes_match))
    high_bytes_match.close()
    image.paste(_WHITE, mask=transparent)
    transparent.close()


def _match(rgb: Image.Image, colour: np.ndarray) -> Image.Image:
    """An L mask, 255 where `rgb` has exactly `colour`, built a strip at a time."""
    mask = Image.new("L", rgb.size)
    width, height = rgb.size
    rows = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        strip = rgb.crop(box)
        hit = (np.asarray(strip) == colour).all(axis=2)
        strip.close()
        mask.paste(Image.fromarray(np.where(hit, 255, 0).astype(np.uint8)), box)
    return mask


def _reopen(image: Image.Image, rawmode: str) -> Image.Image:
    image.fp.seek(0)
    again = Image.open(io.BytesIO(image.fp.read()), formats=(image.format,))
    again.tile = [_with_rawmode(tile, rawmode) for tile in again.tile]
    return again


def _scale_low_depth_transparency(image: Image.Image) -> None:
    """A 2- or 4-bit grey PNG's tRNS value, scaled as Pillow scales its pixels (v * 85, v * 17)."""
    key = image.info.get("transparency")
    if image.format == "PNG" and image.mode == "L" and isinstance(key, int) and image.tile:
        scale = _SCALED_GREY.get(_rawmode(image.tile[0]))
        if scale is not None:
            image.info["transparency"] = key * scale


def _rawmode(tile) -> str | None:
    args = tile[3]
    return args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else None)


def _with_rawmode(tile, rawmode: str):
    args = tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
