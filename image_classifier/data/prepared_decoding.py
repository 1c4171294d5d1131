"""What the worker processes do to an image folder's files: hash them, and decode each into its row of the
mapped images.npy, judging every file ok, bad (with its reason) or not an image.

A file larger than any allowed image could be (`max_file_bytes`) is never read whole, only its first bytes;
a file whose bytes changed since they were hashed is reported, never decoded into the dataset.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from image_classifier.data.prepared_workers import chunks, processes_for, worker_results
from image_classifier.errors import ImageError
from image_classifier.images import FILE_SUFFIXES, decode_image, open_image

# Suffixes that promise an image: such a file that does not decode is a bad image, never skipped quietly.
IMAGE_SUFFIXES = frozenset(
    FILE_SUFFIXES
    + (".jpe", ".jfif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".ico", ".ppm", ".pgm", ".pbm", ".pnm")
    + (".tga", ".jp2", ".psd", ".dng", ".cr2", ".nef", ".arw", ".raw", ".svg", ".apng")
)
HEADER_BYTES = 1 << 16  # what identifies an image's format and declared size (`_judge_oversized`)
HASH_CHUNK = 256  # files per task while hashing: each task is a few milliseconds of reading


def _hash_chunk(root: str, items: list[tuple[int, str]]) -> list[tuple[int, str | None, str | None]]:
    results = []
    for index, path in items:
        digest = hashlib.sha256()
        try:
            with open(os.path.join(root, path), "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            results.append((index, None, f"cannot read it: {exc.strerror or exc}"))
            continue
        results.append((index, digest.hexdigest(), None))
    return results


def hash_files(root: Path, paths: list[str], processes: int | None = None) -> tuple[list[str | None], dict[int, str]]:
    """Every file's sha256 (None where unreadable) and, by index, why a file could not be read."""
    processes = processes or processes_for(len(paths), HASH_CHUNK)
    hashes: list[str | None] = [None] * len(paths)
    unreadable: dict[int, str] = {}
    tasks = ((str(root), chunk) for chunk in chunks(list(enumerate(paths)), HASH_CHUNK))
    with worker_results(_hash_chunk, tasks, processes, len(paths), "hashing") as chunk_results:
        for results in chunk_results:
            for index, digest, problem in results:
                hashes[index] = digest
                if problem is not None:
                    unreadable[index] = problem
    return hashes, unreadable


def _judge(path: str, payload: bytes, image_size: int, max_pixels: int) -> tuple[str, np.ndarray | str | None]:
    """("ok", pixels), ("bad", reason) or ("not_image", None), by the bytes (and the suffix's promise)."""
    promises_image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES
    if not payload:
        return ("bad", "empty file (0 bytes)") if promises_image else ("not_image", None)
    try:
        return "ok", decode_image(payload, max_pixels, image_size)
    except ImageError as exc:
        if exc.status == 415 and not promises_image:
            return "not_image", None
        return "bad", str(exc)


def max_file_bytes(max_pixels: int) -> int:
    """The largest file that is read whole to be decoded: 8 bytes per pixel of the largest image allowed (a
    16-bit RGBA PNG stored uncompressed) and 64 MB of metadata. Anything larger (a video beside the photos of a
    phone's export, a disk image) is judged by its first bytes only: holding it whole would take its size in
    memory, in every worker at once."""
    return max_pixels * 8 + (64 << 20)


def _judge_oversized(path: str, header: bytes, size: int, max_pixels: int) -> tuple[str, str | None]:
    """("bad", reason) or ("not_image", None) for a file too large to read whole, by its suffix and header."""
    promises_image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES
    try:
        open_image(header, max_pixels).close()
    except ImageError as exc:
        if exc.status == 415 and not promises_image:
            return "not_image", None
    return "bad", f"a file of {size:,} bytes, more than any image of at most {max_pixels:,} pixels would take"


def decode_chunk(
    images_path: str, root: str, image_size: int, max_pixels: int, items: list[tuple[int, str, str]]
) -> list[tuple[int, str, str | None]]:
    """Decode `items` (row, path, expected sha256) into their rows of the mapped `images_path`."""
    images = np.load(images_path, mmap_mode="r+")
    results = []
    for row, path, expected in items:
        try:
            with open(os.path.join(root, path), "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                if size > max_file_bytes(max_pixels):
                    results.append((row, *_judge_oversized(path, stream.read(HEADER_BYTES), size, max_pixels)))
                    continue
                payload = stream.read()
        except OSError as exc:
            results.append((row, "bad", f"cannot read it: {exc.strerror or exc}"))
            continue
        if hashlib.sha256(payload).hexdigest() != expected:
            results.append((row, "changed", None))
            continue
        status, value = _judge(path, payload, image_size, max_pixels)
        if status == "ok":
            images[row] = value
            value = None
        results.append((row, status, value))
    images.flush()
    return results
