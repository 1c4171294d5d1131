"""Options the predict command and the service share: which model, its classes, and image limits."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from image_classifier.cli import described
from image_classifier.images import DEFAULT_MAX_PIXELS
from image_classifier.serving.model_request import ModelRequest

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


@described("at least two unique, non-empty names: a,b,c")
def class_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("--classes takes at least two unique, non-empty names: a,b,c")
    return names


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=True,
        help="a run folder (experiments/E/R), a model.pth, models:/NAME/VERSION or models:/NAME@ALIAS; required",
    )
    group.add_argument(
        "--classes",
        type=class_list,
        default=None,
        help="class names in label order, comma-separated, for a bare model.pth (a run names its own)",
    )
    group.add_argument(
        "--metadata",
        type=Path,
        default=None,
        help='a JSON file {"classes": [...]} naming the classes of a bare model.pth; default: metadata.json '
        "beside it, if there is one",
    )
    group.add_argument(
        "--experiments_folder",
        type=Path,
        default=Path("experiments"),
        help="the experiments folder whose model registry resolves models:/ URIs",
    )
    group.add_argument(
        "--mlflow_tracking_uri",
        default=None,
        # Not shown as a default: a tracking URI may carry credentials.
        help=f"MLflow tracking server that resolves models:/ URIs; default: ${TRACKING_URI_ENV}, else none (the "
        "experiments folder's registry)",
    )


def add_image_options(parser: argparse.ArgumentParser, positive_int) -> None:
    parser.add_argument(
        "--max_image_pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse an image whose declared width x height is larger, before decoding it (decompression bombs)",
    )


def model_request_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ModelRequest:
    if args.classes is not None and args.metadata is not None:
        parser.error("give --classes or --metadata, not both")
    return ModelRequest(
        model=args.model,
        classes=args.classes,
        metadata=args.metadata,
        experiments_folder=args.experiments_folder,
        tracking_uri=args.mlflow_tracking_uri or os.environ.get(TRACKING_URI_ENV) or None,
    )
