"""Where prepared datasets live and under which key: the cache folder, the key, the files of a prepared
folder and its manifest's rows, and whether a folder is complete.

The key is a sha256 over the dataset's hash (every file's content hash, path, label and split, and the
classes) and the conversion settings: the same files at the same settings find the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from image_classifier.data.folder import FolderScan
from image_classifier.errors import DatasetError

CACHE_ENV = "IMAGE_CLASSIFIER_CACHE"
CACHE_FORMAT = 1
IMAGES_FILE, LABELS_FILE, MANIFEST_FILE = "images.npy", "labels.npy", "manifest.json"
TEMPORARY_MARKER = ".tmp-"


def default_cache_folder() -> Path:
    """$IMAGE_CLASSIFIER_CACHE, else $XDG_CACHE_HOME/image_classifier/prepared, else ~/.cache/..."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "image_classifier" / "prepared"


def dataset_sha256(scan: FolderScan, hashes: list[str | None]) -> str:
    """One hash over the classes and every file's path, label, layout split and content."""
    document = {
        "classes": list(scan.classes),
        "files": [[file.path, file.label, file.split, digest] for file, digest in zip(scan.files, hashes)],
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def cache_key(dataset_hash: str, conversion: dict) -> str:
    document = {"format": CACHE_FORMAT, "dataset_sha256": dataset_hash, "conversion": conversion}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def check_outside(cache_folder: Path, root: Path) -> None:
    """The dataset folder is only ever read: a cache inside it would change the files it is keyed by."""
    cache, dataset = os.path.realpath(cache_folder), os.path.realpath(root)
    if cache == dataset or cache.startswith(dataset.rstrip(os.sep) + os.sep):
        raise DatasetError(
            f"the prepared-data cache {cache_folder} is inside the dataset folder {root}, which is only ever "
            f"read: choose another with --cache_folder or ${CACHE_ENV}"
        )


def is_complete(target: Path, key: str) -> bool:
    """Whether `target` was published for `key`: its manifest is written last, so a valid one means complete."""
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("key") == key and manifest.get("format") == CACHE_FORMAT


def manifest_row(file, digest: str) -> dict:
    """A row of the manifest: what it is written as, and what a reused one is checked against."""
    return {"path": file.path, "sha256": digest, "label": file.label, "split": file.split}
