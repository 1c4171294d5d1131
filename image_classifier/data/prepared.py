"""Decode an image folder once, on every core, into numpy files that training memory-maps.

A prepared dataset is a folder `<cache>/<key>/` that any tool reads (`np.load(..., mmap_mode="r")`):
- `images.npy`: uint8, N x 3 x S x S (R, G, B planes), each image converted by `image_classifier.images`;
- `labels.npy`: int64, N;
- `manifest.json`: the key, the conversion settings, the classes, and for each row its file's path,
  sha256, label and layout split; then the bad images (path, sha256, reason) and the files that are not
  images.
Rows follow the files' sorted paths. The cache folder is `--cache_folder`, else $IMAGE_CLASSIFIER_CACHE,
else `$XDG_CACHE_HOME/image_classifier/prepared` (`~/.cache/image_classifier/prepared`): never the dataset
folder, which is only read.

The key is a sha256 over every file's content hash, path, label and split, the classes and the conversion
settings (image size, rule version, pixel limit, Pillow's version): a changed, added or removed file, or
another image size, gives a new key; the same files reuse the prepared data without decoding any.

Preparing runs under an exclusive lock on `<key>.lock`, so concurrent runs and the ranks of a torchrun job
decode the folder once: the others wait and then reuse it. It is written into `<key>.tmp-<host>-<pid>/` and
renamed to `<key>/` when complete and flushed to disk: a run killed at any point leaves a temporary folder
that the next preparer on that host removes, never a `<key>/` that is half written.

This module holds `prepare` and the opening of a prepared dataset; the rest lives beside it:
prepared_keys.py (cache folder, key, file names, manifest rows), prepared_workers.py (the process pool),
prepared_decoding.py (hashing and decoding files in the workers), prepared_publish.py (writing the folder
and publishing it in one rename).

A reused prepared dataset is checked against the scan before training reads it (`_open`): its rows, labels,
dtypes and shapes must be those of the scanned files, so a damaged or edited cache is refused. Its pixels are
taken on trust (checking them means decoding again): the cache folder should be writable by its users only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_classifier.data.folder import NOT_IMAGE, FolderScan
from image_classifier.data.prepared_keys import (
    CACHE_ENV,
    IMAGES_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    cache_key,
    check_outside,
    dataset_sha256,
    default_cache_folder,
    is_complete,
    manifest_row,
)
from image_classifier.data.prepared_publish import Job, build
from image_classifier.errors import DatasetError
from image_classifier.images import DEFAULT_MAX_PIXELS, conversion_settings
from image_classifier.locking import exclusive_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset, memory-mapped: `images` and `labels` are read from disk as they are indexed."""

    folder: Path
    key: str
    dataset_sha256: str
    images: np.ndarray  # uint8 N x 3 x S x S, mapped copy-on-write (never written back)
    labels: np.ndarray  # int64 N
    rows: list[dict]  # per row: path, sha256, label, split
    bad_images: list[dict]  # path, sha256, reason
    not_images: list[dict]  # path, sha256
    conversion: dict
    reused: bool


def prepare(
    scan: FolderScan,
    hashes: list[str | None],
    unreadable: dict[int, str],
    image_size: int,
    cache_folder: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    processes: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """The prepared data of `scan` at `image_size`: reused when its key exists, else decoded now, once.

    `on_progress(done, total)` is told after each chunk of files is decoded (the bar shows the same).
    """
    cache_folder = (cache_folder or default_cache_folder()).absolute()
    check_outside(cache_folder, scan.root)
    conversion = conversion_settings(image_size, max_pixels)
    dataset_hash = dataset_sha256(scan, hashes)
    key = cache_key(dataset_hash, conversion)
    try:
        cache_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the prepared-data cache {cache_folder}: {exc.strerror or exc}; choose a writable "
            f"folder with --cache_folder or ${CACHE_ENV}"
        ) from None
    target = cache_folder / key
    if not is_complete(target, key):
        try:
            with exclusive_lock(cache_folder / f"{key}.lock", on_wait=lambda: _log_wait(target)):
                if not is_complete(target, key):  # whoever held the lock may have prepared it meanwhile
                    job = Job(scan, hashes, unreadable, image_size, max_pixels, conversion, key, processes, on_progress)
                    build(job, target)
                    return _open(target, scan, hashes, dataset_hash, reused=False)
        except OSError as exc:  # a read-only or full disk: said as such, not as a traceback
            raise DatasetError(
                f"cannot write the prepared dataset into {cache_folder}: {exc.strerror or exc}; choose another "
                f"folder with --cache_folder or ${CACHE_ENV}"
            ) from None
    logger.info("reusing the prepared dataset %s", target)
    return _open(target, scan, hashes, dataset_hash, reused=True)


def _log_wait(target: Path) -> None:
    logger.info("another process is preparing %s: waiting for it", target)


def _open(target: Path, scan: FolderScan, hashes: list[str | None], dataset_hash: str, reused: bool) -> PreparedData:
    """The prepared dataset in `target`, checked against the scan it was keyed by before training trusts it.

    Every row must be one of the scanned files with its hash, label and split, every scanned file must be a
    row, a bad image or a file that is not an image, `labels.npy` must hold the rows' labels as int64, and
    `images.npy` uint8 N x 3 x S x S at the key's size: a damaged or edited cache (a float array, other
    labels, rows of another folder) is refused, never trained on. Only the pixels themselves are taken on
    trust (checking them is decoding again): keep the cache folder writable by its users only.
    """
    damaged = f"the prepared dataset {target} is damaged or was changed"
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
        shape = [int(side) for side in manifest["shape"]]
        rows, bad_images, not_images = manifest["rows"], manifest["bad_images"], manifest["not_images"]
        conversion = manifest["conversion"]
        # Copy-on-write mapping: writable for torch without a copy, never written back to the cache.
        images = np.load(target / IMAGES_FILE, mmap_mode="c" if shape[0] else None)
        labels = np.load(target / LABELS_FILE)
        problem = _mismatch(scan, hashes, dataset_hash, manifest, shape, rows, bad_images, not_images, images, labels)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{damaged} ({_first_line(exc)}): delete it and run again") from None
    if problem is not None:
        raise DatasetError(f"{damaged} ({problem}): delete it and run again")
    return PreparedData(
        folder=target,
        key=manifest["key"],
        dataset_sha256=dataset_hash,
        images=images,
        labels=labels,
        rows=rows,
        bad_images=bad_images,
        not_images=not_images,
        conversion=conversion,
        reused=reused,
    )


def _mismatch(scan, hashes, dataset_hash, manifest, shape, rows, bad_images, not_images, images, labels) -> str | None:
    """What in a prepared dataset disagrees with the scan it is opened for, or None."""
    size = manifest["conversion"]["image_size"]
    if manifest.get("dataset_sha256") != dataset_hash or list(manifest.get("classes", ())) != list(scan.classes):
        return "its manifest is for other files or classes"
    if images.dtype != np.uint8 or list(images.shape) != [len(rows), 3, size, size] or shape != list(images.shape):
        return f"images.npy is {images.dtype} {list(images.shape)}, not uint8 {[len(rows), 3, size, size]}"
    if labels.dtype != np.int64 or labels.shape != (len(rows),):
        return f"labels.npy is {labels.dtype} {list(labels.shape)}, not int64 [{len(rows)}]"
    scanned = {file.path: (file, digest) for file, digest in zip(scan.files, hashes)}
    for row in rows:
        file, digest = scanned.get(row["path"], (None, None))
        if file is None or row != manifest_row(file, digest):
            return f"row {row['path']!r} is not that scanned file"
    listed = [row["path"] for row in rows] + [item["path"] for item in (*bad_images, *not_images)]
    if len(listed) != len(scanned) or set(listed) != scanned.keys():
        return "it does not list every scanned file exactly once"
    if not np.array_equal(labels, np.array([row["label"] for row in rows], dtype=np.int64)):
        return "labels.npy is not the rows' labels"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def skipped_not_images(prepared: PreparedData) -> list[tuple[str, str]]:
    return [(item["path"], NOT_IMAGE) for item in prepared.not_images]
