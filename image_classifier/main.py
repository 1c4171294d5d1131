"""Train the notebook's CNN on CIFAR-10 and record the run under <experiments>/<experiment>/<run>/.

Copy-paste examples (the password may also come from the DB_PASSWORD environment variable):

    python -m image_classifier.data.synthetic --output data/sample_dataset
    image_classifier_trainer --experiment_name demo --run_name run_1 --dataset_folder data/sample_dataset --db_pass x
    image_classifier_trainer --experiment_name demo --run_name run_2 --dataset_folder data/sample_dataset \\
        --pretrained_model demo/run_1/model.pth --num_epochs 1 --db_pass x
    # continue a run stopped by Ctrl-C, SIGTERM or a crash:
    image_classifier_trainer --experiment_name demo --run_name run_3 ... --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from image_classifier import __version__
from image_classifier.config import TrainConfig
from image_classifier.data.database import Secret
from image_classifier.errors import TrainingInterrupted, UserError

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DB_PASSWORD"


def _checked(convert: Callable, accept: Callable, requirement: str) -> Callable:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {convert.__name__}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value

    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "zero or more")
positive_float = _checked(float, lambda v: 0 < v < math.inf, "a finite number greater than 0")
momentum_float = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" where there is a default to show, not "None" on required or bare flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image_classifier_trainer",
        description="Train the CIFAR-10 tutorial CNN and write model.pth, metrics.png, metrics.json and run.json "
        "to <experiments_folder>/<experiment_name>/<run_name>/.",
        formatter_class=_HelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--experiment_name", required=True, help="experiment folder name (letters, digits, . _ -); required"
    )
    run.add_argument(
        "--run_name",
        required=True,
        help="run folder name inside the experiment (letters, digits, . _ -); required",
    )
    run.add_argument("--experiments_folder", type=Path, default=Path("experiments"), help="where runs are written")
    run.add_argument(
        "--dataset_folder",
        type=Path,
        default=Path("data/cifar_dataset"),
        help="folder with metadata.json and cifar-10-batches-py/",
    )
    run.add_argument(
        "--pretrained_model",
        type=Path,
        default=None,
        help="state_dict to start from: relative to --experiments_folder (e.g. exp/run/model.pth) or absolute",
    )
    run.add_argument(
        "--db_pass",
        default=None,
        help=f"password of the (mocked) database; prefer the {PASSWORD_ENV} environment variable, which keeps it "
        "off the command line. One of the two is required",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--learning_rate", type=positive_float, default=0.001, help="SGD learning rate")
    training.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum, in [0, 1)")
    training.add_argument(
        "--num_epochs", type=non_negative_int, default=2, help="epochs to train; 0 only evaluates the model"
    )
    training.add_argument("--batch_size", type=positive_int, default=4, help="mini-batch size, for training and test")
    training.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=2,
        help="kept from the seed for compatibility: data is held in memory and batched without worker processes, "
        "so this has no effect on speed or results",
    )
    training.add_argument("--seed", type=int, default=0, help="seeds every random generator, the data order too")
    training.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:<index>"
    )
    training.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use only deterministic kernels; --no-deterministic lets PyTorch pick faster, nondeterministic GPU ones",
    )

    recovery = parser.add_argument_group("checkpoints")
    recovery.add_argument(
        "--checkpoint_every",
        type=non_negative_int,
        default=0,
        help="also checkpoint every N training steps (0: only at the start, after each epoch and when stopped)",
    )
    recovery.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run of this experiment and run name from its last checkpoint",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    # Every TrainConfig field is an option of the same name. Paths stay as given (relative to the working
    # directory), so run.json holds no machine's layout.
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    if args.pretrained_model is not None and not args.pretrained_model.is_absolute():
        values["pretrained_model"] = args.experiments_folder / args.pretrained_model
    return TrainConfig(**values)


class _TqdmHandler(logging.StreamHandler):
    """Write log records above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure_logging(verbose: bool) -> None:
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    # Replace our own handler only: calling main() twice in one process must not log everything twice.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _TqdmHandler)] + [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def password_from(parser: argparse.ArgumentParser, db_pass: str | None) -> Secret:
    """The --db_pass value, else $DB_PASSWORD; neither is a usage error (exit 2)."""
    password = db_pass if db_pass is not None else os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"the database password is required: set {PASSWORD_ENV} or pass --db_pass")
    return Secret(password)


def exit_code_of(action: Callable[[], int]) -> int:
    """Run a command's work; a user error becomes one `error: ...` line and exit 1, a stop 130/143."""
    try:
        return action()
    except UserError as exc:
        logger.debug("details", exc_info=True)  # the traceback, with --verbose
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    password = password_from(parser, args.db_pass)
    configure_logging(args.verbose)

    def train() -> int:
        # Imported here so that --help and usage errors answer at once, without loading torch.
        from image_classifier.trainer import run_training

        run_dir = run_training(config_from_args(args), password)
        print(f"run written to {run_dir}")
        return 0

    return exit_code_of(train)


if __name__ == "__main__":
    sys.exit(main())
