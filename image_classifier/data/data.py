"""Load the CIFAR-10 "python version" batches into memory and cut preprocessed mini-batches from them.

Each split is read as one uint8 tensor (N x 3 x 32 x 32, R, G, B). The trainer normalises each split once,
on its device (`prepare_split`), exactly as the notebook's `ToTensor()` + `Normalize((0.5,) * 3, (0.5,) * 3)`
did, and then only slices batches from it; a split left as uint8 is normalised per batch instead. No
workers, no per-image PIL work.
Nothing is ever downloaded: a missing dataset is an error that says where to get CIFAR-10.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import json
import logging
import math
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from image_classifier.data.database import DatabaseSettings, Secret, connect
from image_classifier.errors import DatasetError

logger = logging.getLogger(__name__)

BATCHES_FOLDER = "cifar-10-batches-py"
METADATA_FILE = "metadata.json"
TEST_BATCH = "test_batch"
BATCHES_META = "batches.meta"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
IMAGE_SHAPE = (3, 32, 32)
_PIXELS_PER_IMAGE = 3 * 32 * 32
_TRAIN_BATCH_PATTERN = re.compile(r"data_batch_(\d+)")


@dataclass(frozen=True)
class ImageSplit:
    """One split held in memory: `images` N x 3 x 32 x 32 (uint8 as read, or float32 once prepared),
    `labels` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Cifar10Data:
    train: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]
    file_sha256: dict[str, str]  # every file read, by its path relative to the dataset folder


# --- safe unpickling -------------------------------------------------------------------------------------


class _ForbiddenContent(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR-10 batch never needs (a pickle can run any code it names)."""


def _encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles `bytes` at protocol 2 as `_codecs.encode(text, "latin1")`; nothing else is needed.
    if encoding != "latin1":
        raise _ForbiddenContent(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _numpy_global(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # numpy 1.x has numpy.core, numpy 2.x has numpy._core
        return getattr(importlib.import_module(module.replace("numpy._core", "numpy.core")), name)


# Exactly the globals a CIFAR-10 batch refers to: the Python 2 originals use numpy.core.multiarray; the
# same files written by Python 3 with numpy 2 use numpy._core (and _frombuffer at protocol 5).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_global("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_global("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): _numpy_global("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): _numpy_global("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"): _encode_latin1,
}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenContent(f"it refers to {module}.{name}, which CIFAR-10 batches never need") from None


def safe_unpickle(payload: bytes, source: Path) -> object:
    """Unpickle a CIFAR-10 batch without letting it run code: only allow-listed numpy globals resolve."""
    try:
        # latin1 is how Python 2 `str` (keys, and numpy's raw bytes) must be decoded, as torchvision does.
        return _AllowListUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except _ForbiddenContent as exc:
        raise DatasetError(f"refusing to load {source}: {exc}") from None
    except Exception as exc:  # a truncated or garbled file fails in many ways inside pickle and numpy
        raise DatasetError(f"{source} is not a CIFAR-10 batch file ({type(exc).__name__}: {exc})") from None


# --- reading and validating files ------------------------------------------------------------------------


def _missing_dataset_message(batches_dir: Path, what: str) -> str:
    return (
        f"{what} in {batches_dir}. Download CIFAR-10 (python version) from {CIFAR10_URL} "
        f"(md5 c58f30108f718f92721af3b95e74349a) and extract it into {batches_dir.parent}, or train on a "
        f"generated sample: `python -m image_classifier.data.synthetic --output data/sample_dataset`, "
        f"then --dataset_folder data/sample_dataset"
    )


def load_classes(dataset_folder: Path) -> tuple[str, ...]:
    """Read the class names, in label order, from `<dataset_folder>/metadata.json`."""
    path = dataset_folder / METADATA_FILE
    if not path.is_file():
        raise DatasetError(f'{path} not found: it must hold {{"classes": [...]}} (see the README)')
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f'{path} is not valid metadata: expected {{"classes": [...]}} ({exc})') from None
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise DatasetError(f'{path}: "classes" must be a list of at least two non-empty names')
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{path}: class names must be unique")
    return tuple(classes)


def _as_label_array(labels: object, source: Path) -> np.ndarray:
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if isinstance(labels, list) and all(type(label) is int for label in labels):
        return np.asarray(labels, dtype=np.int64)
    raise DatasetError(f"{source}: 'labels' must be a list of integers")


def parse_batch(batch: object, source: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Check an unpickled batch dict and return its images (N x 3 x 32 x 32 uint8) and labels (N int64)."""
    if not isinstance(batch, dict):
        raise DatasetError(f"{source}: expected a dict with 'data' and 'labels', found {type(batch).__name__}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DatasetError(f"{source}: missing {', '.join(repr(key) for key in missing)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{source}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != _PIXELS_PER_IMAGE or data.shape[0] == 0:
        raise DatasetError(f"{source}: 'data' has shape {data.shape}, expected (N, {_PIXELS_PER_IMAGE}) with N > 0")
    labels = _as_label_array(batch["labels"], source)
    if len(labels) != len(data):
        raise DatasetError(f"{source}: {len(labels)} labels for {len(data)} images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetError(
            f"{source}: labels range over {labels.min()}..{labels.max()}, "
            f"but {METADATA_FILE} names {num_classes} classes (0..{num_classes - 1})"
        )
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane 32 x 32 row-major.
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _read_file(path: Path, hashes: dict[str, str], dataset_folder: Path) -> bytes:
    payload = path.read_bytes()
    hashes[path.relative_to(dataset_folder).as_posix()] = hashlib.sha256(payload).hexdigest()
    return payload


def _read_split(paths: list[Path], num_classes: int, hashes: dict[str, str], dataset_folder: Path) -> ImageSplit:
    parts = [
        parse_batch(safe_unpickle(_read_file(path, hashes, dataset_folder), path), path, num_classes) for path in paths
    ]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return ImageSplit(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


def _train_batch_paths(batches_dir: Path) -> list[Path]:
    numbered = []
    for path in batches_dir.iterdir():
        match = _TRAIN_BATCH_PATTERN.fullmatch(path.name)
        if match and path.is_file():
            numbered.append((int(match.group(1)), path))
    return [path for _, path in sorted(numbered)]


def _check_batches_meta(path: Path, num_classes: int, hashes: dict[str, str], dataset_folder: Path) -> None:
    meta = safe_unpickle(_read_file(path, hashes, dataset_folder), path)
    label_names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(label_names, list):
        raise DatasetError(f"{path}: expected a dict with 'label_names'")
    if len(label_names) != num_classes:
        raise DatasetError(f"{path} names {len(label_names)} classes but {METADATA_FILE} names {num_classes}")


def load_dataset(dataset_folder: Path) -> Cifar10Data:
    """Read every `data_batch_<n>` as training data and `test_batch` as test data, checking each file."""
    classes = load_classes(dataset_folder)
    batches_dir = dataset_folder / BATCHES_FOLDER
    if not batches_dir.is_dir():
        raise DatasetError(_missing_dataset_message(batches_dir, "no CIFAR-10 batches folder"))
    train_paths = _train_batch_paths(batches_dir)
    if not train_paths:
        raise DatasetError(_missing_dataset_message(batches_dir, "no training batch (data_batch_1, ...)"))
    test_path = batches_dir / TEST_BATCH
    if not test_path.is_file():
        raise DatasetError(_missing_dataset_message(batches_dir, f"no {TEST_BATCH}"))

    hashes: dict[str, str] = {}
    _read_file(dataset_folder / METADATA_FILE, hashes, dataset_folder)
    if (batches_dir / BATCHES_META).is_file():
        _check_batches_meta(batches_dir / BATCHES_META, len(classes), hashes, dataset_folder)
    train = _read_split(train_paths, len(classes), hashes, dataset_folder)
    test = _read_split([test_path], len(classes), hashes, dataset_folder)
    logger.info(
        "loaded %d training images from %d batch file(s) and %d test images from %s",
        len(train),
        len(train_paths),
        len(test),
        dataset_folder,
    )
    return Cifar10Data(train=train, test=test, classes=classes, file_sha256=hashes)


def get_train_test_data(dataset_folder: Path, db_settings: DatabaseSettings, db_password: Secret) -> Cifar10Data:
    """The notebook's `get_train_test_data_loader`: "fetch" the data through the (mocked) database."""
    connect(db_settings, db_password)
    return load_dataset(dataset_folder)


# --- preprocessing and batching --------------------------------------------------------------------------


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32 -> float32 in [-1, 1]: the notebook's ToTensor() then Normalize(0.5, 0.5).

    The same operations in the same order as torchvision's, so the values are bit-for-bit identical.
    """
    return images.to(torch.float32).div(255).sub(0.5).div(0.5)


def prepare_split(
    split: ImageSplit, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> ImageSplit:
    """The split normalised once and held on `device`: batches are then slices, with no work per batch.

    The full training set takes 50,000 x 3,072 x 4 bytes = 600 MB as float32. The values are those that
    `preprocess` gives per batch, bit for bit (the same element-wise operations).
    """
    if split.images.dtype != torch.uint8:
        raise ValueError(f"prepare_split takes a split as read (uint8), not {split.images.dtype}")
    # Laid out once as uint8 (a quarter of the bytes), then `preprocess`'s operations in place: the same
    # values bit for bit, without three more full-size temporaries (about 6x faster at the trainer's start).
    images = split.images.to(device).contiguous(memory_format=memory_format).to(torch.float32)
    images.div_(255).sub_(0.5).div_(0.5)
    return ImageSplit(images=images, labels=split.labels.to(device))


def num_batches(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    device: torch.device,
    order: torch.Tensor | None = None,
    start_batch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield preprocessed (images, labels) mini-batches in `order` (default: as stored), from `start_batch`.

    The last batch is smaller when `batch_size` does not divide the split, like DataLoader's default.
    A prepared (float) split is only sliced; a uint8 one is normalised batch by batch.
    """
    if order is None:
        for start in range(start_batch * batch_size, len(split), batch_size):
            yield _batch(split.images[start : start + batch_size], split.labels[start : start + batch_size], device)
        return
    order = order.to(split.labels.device)
    for start in range(start_batch * batch_size, len(order), batch_size):
        batch_indices = order[start : start + batch_size]
        yield _batch(split.images[batch_indices], split.labels[batch_indices], device)


def _batch(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return (images if images.is_floating_point() else preprocess(images)), labels
