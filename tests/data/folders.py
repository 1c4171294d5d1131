"""Small image folders for the tests: every format, mode and size the conversion rule meets, bad files too."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from tests.serving.conftest import png_declaring


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def picture(seed: int, width: int = 32, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A random picture of the given size, in `mode` (converted from RGB; an alpha channel is random)."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        return Image.merge("RGBA", (*rgb.split(), alpha)).convert(mode)
    if mode == "P":
        return rgb.quantize(32)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    return rgb.convert(mode)


def write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def png(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    return encode(picture(seed, *size, mode=mode), "PNG")


def jpeg(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    return encode(picture(seed, *size, mode=mode), "JPEG", quality=90)


def simple_folder(root: Path, classes: dict[str, int], split: str = "", seed: int = 0) -> Path:
    """`<root>/<split>/<class>/<i>.png` with `classes[name]` small PNGs each (split "" for a class tree)."""
    for offset, (name, count) in enumerate(classes.items()):
        for index in range(count):
            write(root / split / name / f"{index}.png", png(seed * 1000 + offset * 100 + index))
    return root


# What `mixed_folder` holds, by kind (paths relative to the folder).
GOOD = 14
MIXED_BAD = {
    "train/cat/truncated.jpg": "truncated or corrupt",
    "train/dog/empty.PNG": "empty file",
    "train/dog/bomb.png": "image too large",
    "train/cat/fake.jpeg": "not an image",
}
MIXED_SKIPPED = {
    "train/cat/.DS_Store": "hidden or system file",
    "train/cat/._a.jpg": "hidden or system file",
    "train/dog/Thumbs.db": "hidden or system file",
    "train/.git": "hidden or system file",
    "train/cat/notes.txt": "not an image (by its bytes and suffix)",
    "README.md": "not inside a class folder",
}


def mixed_folder(root: Path) -> Path:
    """train/ + test/ of cat and dog: PNG, JPEG, BMP, GIF and WebP of several sizes and modes (suffixes in
    any case, one PNG without an image suffix), with corrupt, empty, too large and fake images and hidden,
    system and non-image files."""
    files = {
        "train/cat/rgb.png": png(1),
        "train/cat/grey.PNG": png(2, (40, 30), "L"),
        "train/cat/alpha.png": png(3, (20, 50), "RGBA"),
        "train/cat/palette.gif": encode(picture(4, 33, 33, "P"), "GIF"),
        "train/cat/photo.JPG": jpeg(5, (64, 48)),
        "train/cat/sixteen.png": png(6, (32, 32), "I;16"),
        "train/dog/la.png": png(7, (16, 16), "LA"),
        "train/dog/bitmap.bmp": encode(picture(8, 31, 29), "BMP"),
        "train/dog/lossless.webp": encode(picture(9, 32, 32), "WEBP", lossless=True),
        "train/dog/cmyk.jpg": encode(picture(10, 24, 24).convert("CMYK"), "JPEG"),
        "train/dog/no_suffix_png.dat": png(11),
        "train/dog/sub folder/deep é.jpeg": jpeg(12, (100, 20), "L"),
        "test/cat/t1.png": png(13),
        "test/dog/t2.jpg": jpeg(14, (50, 50)),
        # bad
        "train/cat/truncated.jpg": jpeg(15, (64, 64))[:300],
        "train/dog/empty.PNG": b"",
        "train/dog/bomb.png": png_declaring(20_000, 20_000),
        "train/cat/fake.jpeg": b"<html>not found</html>",
        # skipped
        "train/cat/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "train/cat/._a.jpg": b"\x00\x05\x16\x07",
        "train/dog/Thumbs.db": b"\xd0\xcf\x11\xe0",
        "train/.git/config": b"[core]",
        "train/cat/notes.txt": b"taken in 2019",
        "README.md": b"# my pets",
    }
    for path, payload in files.items():
        write(root / path, payload)
    return root


@contextlib.contextmanager
def read_only(folder: Path, mount_point: Path) -> Iterator[Path]:
    """`folder` seen read-only: a read-only bind mount for root (who may write anywhere), else permissions."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        try:
            yield folder
        finally:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)
        return
    mount_point.mkdir()
    subprocess.run(["mount", "--bind", str(folder), str(mount_point)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount_point)], check=True)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        shutil.rmtree(mount_point)
