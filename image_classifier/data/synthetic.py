"""Generate sample datasets of procedurally drawn images, for tests, demos, benchmarks and CI.

Two forms of the same pictures:
- the CIFAR-10 format, byte-for-byte that of the official "python version" (Python 2 pickles, protocol 2,
  numpy arrays through `numpy.core.multiarray._reconstruct`), so every code path that reads them also
  reads the real CIFAR-10;
- an image folder, `train/<class>/` and `test/<class>/` (or `<class>/` only), of PNG and JPEG files of
  mixed sizes and modes (RGB, grey, RGBA, palette), with upper- and lower-case suffixes: what people's own
  image folders look like.
Each of the ten classes is one shape in one hue band, drawn at a random place, size and brightness on a
random background with noise: easy enough for the notebook's model to learn in a couple of epochs, varied
enough that it has to.

    python -m image_classifier.data.synthetic --output data/sample_dataset --train_size 5000 --test_size 1000
    python -m image_classifier.data.synthetic --image_folder --output data/sample_images --train_size 500 \\
        --test_size 100 --min_side 24 --max_side 64

The options are spelled with underscores, as in every other command; the hyphen spellings of earlier versions
(`--train-size`) still work.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np

from image_classifier.cli import non_negative_int, positive_int
from image_classifier.cli_parser import ArgumentParser
from image_classifier.data.cifar import BATCHES_FOLDER, BATCHES_META, METADATA_FILE, TEST_BATCH
from image_classifier.data.py2_pickle import py2_pickle_dict
from image_classifier.errors import UserError

logger = logging.getLogger(__name__)

# The seed's class names (metadata.json) and the official ones (batches.meta), in label order.
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SIZE = 32


# --- drawing ---------------------------------------------------------------------------------------------


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs of shape (N,), output (N, 3), all in [0, 1]."""
    sector = np.floor(hue * 6) % 6
    fraction = hue * 6 - np.floor(hue * 6)
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    table = np.stack(
        [
            np.stack([value, t, p], 1),
            np.stack([q, value, p], 1),
            np.stack([p, value, t], 1),
            np.stack([p, q, value], 1),
            np.stack([t, p, value], 1),
            np.stack([value, p, q], 1),
        ]
    )
    return table[sector.astype(int), np.arange(len(hue))]


def _shape_masks(label: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean masks (count x 32 x 32) of class `label`'s shape at random centres, sizes and phases."""
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
    centre_x = rng.uniform(11, 21, (count, 1, 1))
    centre_y = rng.uniform(11, 21, (count, 1, 1))
    radius = rng.uniform(6, 11, (count, 1, 1))
    period = rng.uniform(5, 9, (count, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
    dx, dy = xx - centre_x, yy - centre_y
    distance = np.hypot(dx, dy)
    inside_square = np.maximum(abs(dx), abs(dy)) < radius
    shapes = [
        lambda: distance < radius,  # disk
        lambda: np.maximum(abs(dx), abs(dy)) < 0.8 * radius,  # square
        lambda: (distance < radius) & (distance > 0.55 * radius),  # ring
        lambda: np.sin(2 * np.pi * yy / period + phase) > 0,  # horizontal stripes
        lambda: np.sin(2 * np.pi * xx / period + phase) > 0,  # vertical stripes
        lambda: np.sin(2 * np.pi * (xx + yy) / (1.4 * period) + phase) > 0,  # diagonal stripes
        lambda: inside_square & ((abs(dx) < 0.3 * radius) | (abs(dy) < 0.3 * radius)),  # cross
        lambda: (dy < 0.8 * radius) & (abs(dx) < (dy + radius) / 2),  # triangle
        lambda: ((np.floor((xx + phase) / (period / 2)) + np.floor(yy / (period / 2))) % 2) == 0,  # checks
        lambda: abs(dx) + abs(dy) < radius,  # diamond
    ]
    return np.broadcast_to(shapes[label % len(shapes)](), (count, _SIZE, _SIZE))


def draw_images(labels: np.ndarray, rng: np.random.Generator, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Draw one image per label: uint8 N x 3 x 32 x 32."""
    images = np.empty((len(labels), 3, _SIZE, _SIZE), dtype=np.float32)
    for label in range(num_classes):
        index = np.flatnonzero(labels == label)
        count = len(index)
        if count == 0:
            continue
        hue = (label / num_classes + rng.uniform(-0.03, 0.03, count)) % 1.0
        foreground = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0, count), rng.uniform(0.55, 1.0, count))
        background = _hsv_to_rgb(rng.uniform(0, 1, count), rng.uniform(0, 0.35, count), rng.uniform(0.1, 0.9, count))
        mask = _shape_masks(label, count, rng)[:, None]
        images[index] = np.where(mask, foreground[:, :, None, None], background[:, :, None, None]) * 255
    images += rng.normal(0, 12, images.shape).astype(np.float32)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


# --- writing a dataset -----------------------------------------------------------------------------------


def _batch_dict(batch_label: str, images: np.ndarray, labels: np.ndarray, first_index: int) -> dict[str, object]:
    filenames = [f"{CIFAR10_LABEL_NAMES[label]}_s_{first_index + i:06d}.png" for i, label in enumerate(labels)]
    return {  # in the order Python 2's dict kept these keys, as in the real files
        "data": images.reshape(len(images), -1),
        "labels": [int(label) for label in labels],
        "batch_label": batch_label,
        "filenames": filenames,
    }


def generate_dataset(output: Path, train_size: int, test_size: int, seed: int = 0, train_batches: int = 5) -> Path:
    """Write `<output>/cifar-10-batches-py/` (data_batch_1..k, test_batch, batches.meta) and metadata.json."""
    if train_size < train_batches or test_size < 1 or train_batches < 1:
        raise UserError("need at least one image per training batch and at least one test image")
    batches_dir = output / BATCHES_FOLDER
    if batches_dir.exists():
        raise UserError(
            f"{batches_dir} already exists: a dataset was generated there before (`make demo` and `make data` "
            f"generate data/sample_dataset), and it can be used as it is (--dataset_folder {output}). To generate "
            f"it again, delete {batches_dir} first, or choose another --output"
        )
    rng = np.random.default_rng(seed)
    # Balanced classes in random order, like CIFAR-10's 5,000 training and 1,000 test images per class.
    train_labels = rng.permutation(np.arange(train_size) % len(CLASSES))
    test_labels = rng.permutation(np.arange(test_size) % len(CLASSES))
    train_images, test_images = draw_images(train_labels, rng), draw_images(test_labels, rng)

    batches_dir.mkdir(parents=True)
    first_index = 0
    for number, index in enumerate(np.array_split(np.arange(train_size), train_batches), start=1):
        batch = _batch_dict(
            f"training batch {number} of {train_batches}", train_images[index], train_labels[index], first_index
        )
        (batches_dir / f"data_batch_{number}").write_bytes(py2_pickle_dict(batch))
        first_index += len(index)
    test = _batch_dict("testing batch 1 of 1", test_images, test_labels, first_index)
    (batches_dir / TEST_BATCH).write_bytes(py2_pickle_dict(test))
    meta = {
        "num_cases_per_batch": int(np.ceil(train_size / train_batches)),
        "label_names": list(CIFAR10_LABEL_NAMES),
        "num_vis": 3 * _SIZE * _SIZE,
    }
    (batches_dir / BATCHES_META).write_bytes(py2_pickle_dict(meta))
    (output / METADATA_FILE).write_text(json.dumps({"classes": list(CLASSES)}, indent=4) + "\n", encoding="utf-8")
    return batches_dir


# (format, mode, suffix) drawn per file: PNG in every mode it stores, JPEG in the two it does.
_FILE_KINDS = (
    ("PNG", "RGB", ".png"),
    ("PNG", "L", ".png"),
    ("PNG", "RGBA", ".PNG"),
    ("PNG", "P", ".png"),
    ("JPEG", "RGB", ".jpg"),
    ("JPEG", "RGB", ".JPEG"),
    ("JPEG", "L", ".jpeg"),
)


def _image_file(pixels: np.ndarray, kind: tuple[str, str, str], side: tuple[int, int], rng) -> bytes:
    """One drawn image (3 x 32 x 32) as a file of the given kind, resized to `side` (width, height)."""
    from PIL import Image  # only the image-folder form needs Pillow

    fmt, mode, _ = kind
    image = Image.fromarray(pixels.transpose(1, 2, 0)).resize(side, Image.Resampling.BILINEAR)
    if mode == "RGBA":
        alpha = rng.integers(160, 256, (side[1], side[0]), dtype=np.uint8)
        image = Image.merge("RGBA", (*image.split(), Image.fromarray(alpha)))
    elif mode == "P":
        image = image.quantize(64)
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def generate_image_folder(
    output: Path,
    train_size: int,
    test_size: int,
    seed: int = 0,
    min_side: int = 24,
    max_side: int = 64,
    with_test_folder: bool = True,
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Write `<output>/train/<class>/*` and `<output>/test/<class>/*` (or `<output>/<class>/*` for
    train_size + test_size images when not `with_test_folder`): PNG and JPEG files of mixed sizes and modes."""
    if train_size < len(classes) or (with_test_folder and test_size < len(classes)):
        raise UserError(f"need at least one image per class ({len(classes)}) in each split")
    if not 1 <= min_side <= max_side:
        raise UserError("need 1 <= --min_side <= --max_side")
    if output.exists() and any(output.iterdir()):
        raise UserError(
            f"{output} already exists and is not empty: images were generated there before (`make images` and "
            f"`make demo-folder` generate data/sample_images), and it can be used as it is (--dataset_folder "
            f"{output}). To generate it again, delete {output} first, or choose another --output"
        )
    rng = np.random.default_rng(seed)
    splits = [("train", train_size), ("test", test_size)] if with_test_folder else [("", train_size + test_size)]
    for split, size in splits:
        labels = rng.permutation(np.arange(size) % len(classes))
        images = draw_images(labels, rng, num_classes=len(classes))
        for name in classes:
            (output / split / name).mkdir(parents=True, exist_ok=True)
        kinds = rng.integers(0, len(_FILE_KINDS), size)
        sides = rng.integers(min_side, max_side + 1, (size, 2))
        for index, (label, pixels) in enumerate(zip(labels, images)):
            kind = _FILE_KINDS[kinds[index]]
            payload = _image_file(pixels, kind, (int(sides[index, 0]), int(sides[index, 1])), rng)
            (output / split / classes[label] / f"{classes[label]}_{split or 'all'}_{index:06d}{kind[2]}").write_bytes(
                payload
            )
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m image_classifier.data.synthetic",
        description="Generate a learnable dataset in the exact CIFAR-10 python-batches file format, or as a "
        "folder of PNG and JPEG images (--image_folder). Every option is also accepted with hyphens "
        "(--train-size), as earlier versions spelled them.",
    )
    # The underscore spelling first: usage errors and --help name an option by its first long spelling.
    parser.add_argument("--output", type=Path, required=True, help="dataset folder to create (required)")
    parser.add_argument("--train_size", "--train-size", type=non_negative_int, default=5000, help="training images")
    parser.add_argument("--test_size", "--test-size", type=non_negative_int, default=1000, help="test images")
    parser.add_argument("--train_batches", "--train-batches", type=positive_int, default=5, help="data_batch_<n> files")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    folder = parser.add_argument_group("image folder")
    folder.add_argument(
        "--image_folder",
        "--image-folder",
        action="store_true",
        help="write train/<class>/ and test/<class>/ folders of PNG and JPEG files instead of CIFAR-10 batches",
    )
    folder.add_argument(
        "--min_side", "--min-side", type=positive_int, default=24, help="smallest image width or height"
    )
    folder.add_argument("--max_side", "--max-side", type=positive_int, default=64, help="largest image width or height")
    folder.add_argument(
        "--no_test_folder",
        "--no-test-folder",
        action="store_true",
        help="one <class>/ tree of train_size + test_size images, for --test_fraction to split",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.image_folder:
            written = generate_image_folder(
                args.output,
                args.train_size,
                args.test_size,
                args.seed,
                args.min_side,
                args.max_side,
                with_test_folder=not args.no_test_folder,
            )
        else:
            written = generate_dataset(args.output, args.train_size, args.test_size, args.seed, args.train_batches)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logger.info("wrote %d training and %d test images to %s", args.train_size, args.test_size, written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
