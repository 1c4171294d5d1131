"""The dataset a run trains on: CIFAR-10 python batches or a folder of images, recognised by its layout.

- A folder with `cifar-10-batches-py/` (or `metadata.json` and no sub-folder) is CIFAR-10 (`cifar.py`), read
  into memory exactly as before image folders existed.
- A folder with visible sub-folders is an image folder (`folder.py`): scanned, every file hashed, decoded
  once into a prepared dataset (`prepared.py`) that both splits read memory-mapped.
The notebook's names (`get_train_test_data`, `iterate_batches`, `num_batches`, `preprocess`) are kept here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from image_classifier.data.batches import ImageSplit, iterate_batches, num_batches, preprocess  # noqa: F401
from image_classifier.data.cifar import BATCHES_FOLDER, METADATA_FILE, load_dataset
from image_classifier.data.database import DatabaseSettings, connect
from image_classifier.data.folder import (
    DEFAULT_TEST_FRACTION,
    SKIP_COUNT_NAMES,
    TEST,
    TRAIN,
    FolderScan,
    bad_images_message,
    looks_like_image_folder,
    scan_folder,
)
from image_classifier.data.prepared import PreparedData, prepare, skipped_not_images
from image_classifier.data.prepared_decoding import hash_files
from image_classifier.data.splits import leaked_pairs, stratified_split
from image_classifier.errors import DatasetError
from image_classifier.images import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_PIXELS
from image_classifier.manifest import shown_path
from image_classifier.secret import Secret

logger = logging.getLogger(__name__)

IMAGE_FOLDER_FORMAT = "image folder"
LEAKS_LOGGED = 10  # pairs named in the log; run.json lists them all


@dataclass(frozen=True)
class DataOptions:
    """How an image folder becomes training data (CIFAR-10 batches only accept the default image size)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 0  # draws the --test_fraction split
    skip_bad_images: bool = False
    cache_folder: Path | None = None  # None: prepared_keys.default_cache_folder()
    max_pixels: int = DEFAULT_MAX_PIXELS
    processes: int | None = None  # None: every core


@dataclass(frozen=True)
class TrainTestData:
    train: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]
    # What a resumed run must find again: every CIFAR-10 file's sha256 by path, or a prepared folder's key
    # (its files' content and the conversion settings).
    fingerprint: dict[str, str] | str
    record: dict  # run.json's "dataset" (the trainer adds the folder)
    manifest: dict | None = None  # run.json's "dataset_manifest": every file of an image folder


def get_train_test_data(
    dataset_folder: Path, db_settings: DatabaseSettings, db_password: Secret, options: DataOptions = DataOptions()
) -> TrainTestData:
    """The notebook's `get_train_test_data_loader`: "fetch" the data through the (mocked) database."""
    connect(db_settings, db_password)
    return load_train_test_data(dataset_folder, options)


def load_train_test_data(dataset_folder: Path, options: DataOptions = DataOptions()) -> TrainTestData:
    if not dataset_folder.is_dir():
        raise DatasetError(
            f"dataset folder {dataset_folder} not found: give an image folder or the CIFAR-10 python batches "
            f"({METADATA_FILE} and {BATCHES_FOLDER}/; see the README for both)"
        )
    image_folder = looks_like_image_folder(dataset_folder)
    if (dataset_folder / BATCHES_FOLDER).exists() or ((dataset_folder / METADATA_FILE).is_file() and not image_folder):
        return _cifar(dataset_folder, options)  # its own errors say what is missing and where to get it
    if image_folder:
        return load_image_folder(dataset_folder, options)
    raise DatasetError(
        f"no dataset in {dataset_folder}: expected an image folder (<class>/ or train/<class>/ folders of "
        f"images) or the CIFAR-10 python batches ({METADATA_FILE} and {BATCHES_FOLDER}/; see the README)"
    )


def _cifar(dataset_folder: Path, options: DataOptions) -> TrainTestData:
    if options.image_size != DEFAULT_IMAGE_SIZE:
        raise DatasetError(
            f"--image_size {options.image_size}: the CIFAR-10 batches in {dataset_folder} hold "
            f"{DEFAULT_IMAGE_SIZE} x {DEFAULT_IMAGE_SIZE} images; --image_size applies to image folders"
        )
    data = load_dataset(dataset_folder)
    return TrainTestData(
        train=data.train,
        test=data.test,
        classes=data.classes,
        fingerprint=data.file_sha256,
        record={"sha256": data.file_sha256},
    )


def load_image_folder(root: Path, options: DataOptions) -> TrainTestData:
    """Scan, hash, prepare (or reuse) and split an image folder; every bad image is found before training."""
    scan = scan_folder(root)
    hashes, unreadable = hash_files(root, [file.path for file in scan.files], options.processes)
    prepared = prepare(
        scan, hashes, unreadable, options.image_size, options.cache_folder, options.max_pixels, options.processes
    )
    if prepared.bad_images and not options.skip_bad_images:
        raise DatasetError(bad_images_message(root, prepared.bad_images))
    for item in prepared.bad_images:
        logger.warning("skipping bad image %s: %s", shown_path(item["path"]), item["reason"])
    labels = prepared.labels
    _check_classes_have_images(scan, prepared)
    if scan.has_test_split:
        is_test = np.array([row["split"] == TEST for row in prepared.rows], dtype=bool)
    else:
        is_test = stratified_split(labels, options.test_fraction, options.seed, scan.classes)
    tested = set(labels[is_test].tolist())
    without_test = [name for label, name in enumerate(scan.classes) if label not in tested]
    if without_test:
        logger.warning("classes without test images (their test accuracy is n/a): %s", ", ".join(without_test))
    if not is_test.any():
        raise DatasetError(f"{root}: the test split holds no image")
    paths = [row["path"] for row in prepared.rows]
    leaks = leaked_pairs(paths, [row["sha256"] for row in prepared.rows], is_test)
    if leaks:
        named = "; ".join(f"{shown_path(test)} = {shown_path(train)}" for train, test in leaks[:LEAKS_LOGGED])
        more = f" and {len(leaks) - LEAKS_LOGGED} more (run.json lists them all)" if len(leaks) > LEAKS_LOGGED else ""
        logger.warning(
            "%d test image(s) have the same bytes as a training image (leakage): %s%s", len(leaks), named, more
        )
    skipped = [*scan.skipped, *skipped_not_images(prepared)]
    if skipped:
        counts = Counter(reason for _, reason in skipped)
        logger.info("skipped %d file(s): %s", len(skipped), ", ".join(f"{n} {why}" for why, n in counts.items()))
    images = torch.from_numpy(prepared.images)
    train_rows, test_rows = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    train = ImageSplit(images, torch.from_numpy(labels[train_rows]), torch.from_numpy(train_rows))
    test = ImageSplit(images, torch.from_numpy(labels[test_rows]), torch.from_numpy(test_rows))
    logger.info(
        "image folder %s (%s, classes from %s): %d training and %d test images of %d classes at %d x %d",
        root,
        scan.layout,
        scan.classes_from,
        len(train),
        len(test),
        len(scan.classes),
        options.image_size,
        options.image_size,
    )
    record = _record(scan, prepared, options, len(train), len(test), skipped, len(leaks))
    manifest = _manifest(scan, prepared, is_test, skipped, leaks)
    return TrainTestData(train, test, scan.classes, prepared.key, record, manifest)


def _check_classes_have_images(scan: FolderScan, prepared: PreparedData) -> None:
    counts = np.bincount(
        [row["label"] for row in prepared.rows if row["split"] != TEST], minlength=len(scan.classes)
    ).tolist()
    empty = [name for name, count in zip(scan.classes, counts) if count == 0]
    if empty:
        raise DatasetError(f"{scan.root}: classes without any training image that decodes: {', '.join(empty)}")


def _record(scan, prepared, options, train_size, test_size, skipped, leaks) -> dict:
    if scan.has_test_split:
        split = {"from": "folders", "layout": scan.layout}
    else:
        split = {"from": "--test_fraction", "test_fraction": options.test_fraction, "seed": options.seed}
    return {
        "format": IMAGE_FOLDER_FORMAT,
        "layout": scan.layout,
        "classes_from": scan.classes_from,
        "sha256": prepared.dataset_sha256,
        "images": {TRAIN: train_size, TEST: test_size},
        "split": split,
        "conversion": prepared.conversion,
        "prepared": {"folder": str(prepared.folder), "key": prepared.key, "reused": prepared.reused},
        "skipped": dict(sorted(Counter(SKIP_COUNT_NAMES[reason] for _, reason in skipped).items())),
        "bad_images_skipped": len(prepared.bad_images),
        "leaked_test_images": leaks,
    }


def _manifest(scan, prepared, is_test, skipped, leaks) -> dict:
    files = {
        row["path"]: {"class": scan.classes[row["label"]], "split": TEST if test else TRAIN, "sha256": row["sha256"]}
        for row, test in zip(prepared.rows, is_test.tolist())
    }
    return {
        "sha256": prepared.dataset_sha256,
        "classes": list(scan.classes),
        "files": files,
        "bad_images": prepared.bad_images,
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "leaks": [{"train": train, "test": test} for train, test in leaks],
    }
