"""image_classifier_predict: the top-k classes of image files, from a trained model.

Copy-paste examples:

    image_classifier_predict --model experiments/local_exp_test/run_1 cat.png dog.jpg
    image_classifier_predict --model experiments/local_exp_test/run_1 --format json --top_k 1 photos/
    image_classifier_predict --model models:/cifar@production --format csv photos/
    image_classifier_predict --model model.pth --metadata data/cifar_dataset/metadata.json cat.webp

A folder means every image in it (.png .jpg .jpeg .bmp .gif .webp, not recursive). A file that cannot be
read is reported for that file and the others are still classified; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from image_classifier import __version__
from image_classifier.cli import add_verbose_option, configure_logging, exit_code_of, positive_int
from image_classifier.cli_parser import ArgumentParser
from image_classifier.images import FILE_SUFFIXES
from image_classifier.serving.options import add_image_options, add_model_options, model_request_from
from image_classifier.serving.settings import OUTPUT_FORMATS, PredictSettings

if TYPE_CHECKING:  # model_source imports torch, which --help must not wait for
    from image_classifier.serving.model_source import ModelInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    image: str
    predictions: list[dict] | None = None
    error: str | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="image_classifier_predict",
        description="Print the most probable classes of each image, from a trained run, a model.pth or a "
        "registered model.",
    )
    add_model_options(parser)
    parser.add_argument("images", nargs="+", type=Path, help="image files, or folders of images")
    output = parser.add_argument_group("output")
    output.add_argument("--top_k", type=positive_int, default=3, help="classes per image, most probable first")
    output.add_argument("--format", choices=OUTPUT_FORMATS, default="table", help="output on stdout")
    work = parser.add_argument_group("work")
    work.add_argument("--batch_size", type=positive_int, default=256, help="images per forward pass")
    add_image_options(work, positive_int)
    work.add_argument(
        "--torch_threads", type=positive_int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)"
    )
    add_verbose_option(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PredictSettings:
    return PredictSettings(
        model=model_request_from(parser, args),
        images=tuple(args.images),
        top_k=args.top_k,
        output_format=args.format,
        batch_size=args.batch_size,
        max_image_pixels=args.max_image_pixels,
        torch_threads=args.torch_threads,
    )


def image_files(paths: tuple[Path, ...]) -> list[tuple[Path, str | None]]:
    """(file, None) for every image to classify, or (path, why not) for a path that gives none."""
    found: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
            found.extend((p, None) for p in inside)
            if not inside:
                found.append((path, f"no image ({' '.join(FILE_SUFFIXES)}) in this folder"))
        elif path.is_file():
            found.append((path, None))
        else:
            found.append((path, "no such file or folder"))
    return found


def classify(settings: PredictSettings, out: TextIO) -> int:
    # Imported here so that --help and usage errors answer at once, without loading torch.
    import numpy as np
    import torch

    from image_classifier.errors import ImageError
    from image_classifier.images import decode_image
    from image_classifier.serving.model_source import load_model, top_k

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    model = load_model(settings.model)
    results: list[FileResult] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if pending:
            probabilities = model.probabilities(np.stack([image for _, image in pending]))
            for (name, _), row in zip(pending, probabilities):
                results.append(FileResult(name, predictions=top_k(row, model.classes, settings.top_k)))
            pending.clear()

    for path, problem in image_files(settings.images):
        if problem is None:
            try:
                image = decode_image(path.read_bytes(), settings.max_image_pixels, model.image_size)
                pending.append((str(path), image))
            except ImageError as exc:
                problem = str(exc)
            except OSError as exc:
                problem = f"cannot read it: {exc.strerror or exc}"
        if problem is not None:
            flush()  # keep the output in the order of the arguments
            results.append(FileResult(str(path), error=problem))
            print(f"error: {path}: {problem}", file=sys.stderr)
        elif len(pending) >= settings.batch_size:
            flush()
    flush()
    write_results(results, model.info, settings.output_format, out)
    return 1 if any(result.error for result in results) else 0


def write_results(results: list[FileResult], info: ModelInfo, output_format: str, out: TextIO) -> None:
    if output_format == "json":
        model = {
            "sha256": info.sha256,
            "source": info.source,
            "name": info.registry_name,
            "version": info.registry_version,
        }
        rows = [
            (
                {"image": r.image, "predictions": r.predictions}
                if r.error is None
                else {"image": r.image, "error": r.error}
            )
            for r in results
        ]
        json.dump({"model": model, "results": rows}, out, indent=2)
        out.write("\n")
    elif output_format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["image", "rank", "class", "probability", "error"])
        for r in results:
            if r.error is not None:
                writer.writerow([r.image, "", "", "", r.error])
            for rank, p in enumerate(r.predictions or [], start=1):
                writer.writerow([r.image, rank, p["class"], f"{p['probability']:.6f}", ""])
    else:
        width = max([len("IMAGE"), *(len(r.image) for r in results)])
        out.write(f"{'IMAGE':<{width}}  PREDICTIONS (class probability)\n")
        for r in results:
            shown = (
                f"error: {r.error}"
                if r.error
                else ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r.predictions)
            )
            out.write(f"{r.image:<{width}}  {shown}\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args)
    configure_logging(args.verbose)
    return exit_code_of(lambda: classify(settings, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
