"""Turn an image file's bytes into the model's input: uint8 3 x S x S, R, G, B, as CIFAR-10 stores it.

S is the image size, 32 by default (CIFAR-10's); training on an image folder (`--image_size`) and serving
the model it gives both convert with this module, at the size the run recorded.

The one conversion rule (the README's "Serving predictions" states it too):
1. only PNG, JPEG, BMP, GIF and WebP are decoded (the first frame of an animation); the declared size is
   checked against a pixel limit *before* any pixel is decoded, so a small file that declares a huge image
   (a decompression bomb) is refused without using the memory; a truncated file is an error, never padded;
2. the EXIF orientation, when there is one, is applied (a phone photo is upright, as it is shown);
3. 16-bit images keep their high byte, v >> 8: that is what Pillow does with 16-bit colour PNGs as it reads
   them, and 16-bit grey follows the same rule (an 8-bit image scaled to 16 bits, v8 * 257, gets v8 back);
4. transparency (an alpha channel or a transparent palette entry) is composited over white;
5. the result is RGB; anything but S x S is resized to S x S with Pillow's BICUBIC filter (which
   antialiases when shrinking), stretching rather than cropping, so the whole picture is seen;
6. then the training normalisation, `preprocess`, is applied to the batch by the model code.
An S x S RGB image without transparency skips steps 3-5: its pixels are exactly the training data's.
"""

from __future__ import annotations

import io

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from image_classifier.errors import ImageError

DEFAULT_IMAGE_SIZE = 32  # CIFAR-10's, and the notebook model's
# Bumped whenever the rule below changes what any input converts to: prepared datasets are keyed by it.
RULE_VERSION = 1
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# 36 megapixels: a 6000 x 6000 photo decodes (about 150 MB at 4 bytes a pixel); a bomb declaring more does not.
DEFAULT_MAX_PIXELS = 36_000_000
RESAMPLING = Image.Resampling.BICUBIC
_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(
    payload: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, image_size: int = DEFAULT_IMAGE_SIZE
) -> np.ndarray:
    """The model input for one image file's bytes: uint8 3 x S x S. Raises ImageError for bad input."""
    return convert_image(open_image(payload, max_pixels), image_size)


def open_image(payload: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read the header only (format and declared size), quickly; refuse what is not an image or too large."""
    if not payload:
        raise ImageError("empty image: no bytes were sent")
    return _open(payload, max_pixels)


def convert_image(image: Image.Image, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode the pixels of an opened image and convert them per the module's rule: uint8 3 x S x S."""
    try:
        rgb = _to_rgb(image, (image_size, image_size))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}", status=413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports a truncated or corrupt stream as OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError, only when the pixels are decoded.
        raise ImageError(f"the image cannot be decoded (truncated or corrupt): {_first_line(exc)}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def _open(payload: bytes, max_pixels: int) -> Image.Image:
    try:
        # Pillow's own bomb check only warns below twice its MAX_IMAGE_PIXELS (89 M); ours, below, is stricter.
        # (warnings.catch_warnings would silence it, but is not thread-safe, and decoding runs in threads.)
        image = Image.open(io.BytesIO(payload), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})", status=415) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}", status=413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"the image cannot be read (truncated or corrupt): {_first_line(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"the image declares an empty size ({width} x {height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: it declares {width} x {height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,}",
            status=413,
        )
    return image


def conversion_settings(image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """What the rule's output depends on besides the bytes: recorded with, and keying, prepared data."""
    return {
        "rule_version": RULE_VERSION,
        "image_size": image_size,
        "resampling": RESAMPLING.name,
        "max_pixels": max_pixels,
        "pillow": PIL.__version__,  # another Pillow (and its codecs) may decode JPEG differently
    }


def _to_rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Decode and convert per the module's rule; an RGB image of `size` without transparency is untouched."""
    image.load()  # decodes the first frame; raises on a truncated file
    ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an image that needs no turn
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_grey(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        rgb = image
    elif _has_transparency(image):
        rgba = image.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, RESAMPLING)
    return rgb


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    # The high byte, as Pillow reduces 16-bit colour; mode "I" can hold negative or larger values: clipped.
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(values.astype(np.uint8))  # 2-D uint8: mode L


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
