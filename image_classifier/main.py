"""Train the notebook's CNN (or a torchvision model) on CIFAR-10 and record the run under
<experiments>/<experiment>/<run>/.

Copy-paste examples (the password may also come from the DB_PASSWORD environment variable):

    python -m image_classifier.data.synthetic --output data/sample_dataset
    image_classifier_trainer --experiment_name demo --run_name run_1 --dataset_folder data/sample_dataset --db_pass x
    # a folder of your own images, <class>/<image> (or train/<class>/... and test/<class>/...):
    image_classifier_trainer --experiment_name pets --run_name run_1 --dataset_folder ~/pets --augment --db_pass x
    image_classifier_trainer --experiment_name demo --run_name run_2 --dataset_folder data/sample_dataset \\
        --pretrained_model demo/run_1/model.pth --num_epochs 1 --db_pass x
    # torchvision's ResNet-18, from ImageNet weights downloaded beforehand (its 1000-class head is replaced):
    image_classifier_trainer --experiment_name demo --run_name resnet --dataset_folder data/sample_dataset \
        --architecture resnet18 --pretrained_model /abs/path/resnet18-f37072fd.pth --db_pass x
    # continue a run stopped by Ctrl-C, SIGTERM or a crash:
    image_classifier_trainer --experiment_name demo --run_name run_3 ... --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from pathlib import Path

from image_classifier import __version__
from image_classifier.cli import (
    add_password_option,
    add_verbose_option,
    checked,
    configure_logging,
    described,
    exit_code_of,
    non_negative_int,
    password_from,
    positive_float,
    positive_int,
    seed_int,
)
from image_classifier.cli_parser import ArgumentParser
from image_classifier.config import NAME_RULE, TrainConfig, is_valid_name
from image_classifier.errors import UserError
from image_classifier.run_dir import INCOMPLETE_SUFFIX
from image_classifier.tracking.registry import is_model_uri
from image_classifier.tracking.uri import TRACKING_URI_ENV, tracking_uri_from

logger = logging.getLogger(__name__)

momentum_float = checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
fraction_float = checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
# 8 px: below that a 4-pixel crop padding is more than half the image; 1024 px: 3 MB an image as uint8.
image_size_int = checked(int, lambda v: 8 <= v <= 1024, "a whole number from 8 to 1024")
experiment_name_text = checked(str, is_valid_name, NAME_RULE)
run_name_text = checked(
    str,
    lambda v: is_valid_name(v) and not v.endswith(INCOMPLETE_SUFFIX),
    f"{NAME_RULE}, not ending in {INCOMPLETE_SUFFIX}",
)
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@described("auto, cpu, cuda or cuda:<index>")
def device_name(text: str) -> str:
    if not _DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError("not a device: use auto, cpu, cuda or cuda:<index>")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="image_classifier_trainer",
        description="Train the CIFAR-10 tutorial CNN (or a torchvision model: --architecture) and write model.pth, "
        "metrics.png, metrics.json and run.json "
        "to <experiments_folder>/<experiment_name>/<run_name>/.",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--experiment_name",
        type=experiment_name_text,
        required=True,
        help="experiment folder name (letters, digits, . _ -); required",
    )
    run.add_argument(
        "--run_name",
        type=run_name_text,
        required=True,
        help="run folder name inside the experiment (letters, digits, . _ -); required",
    )
    run.add_argument("--experiments_folder", type=Path, default=Path("experiments"), help="where runs are written")
    run.add_argument(
        "--dataset_folder",
        type=Path,
        default=Path("data/cifar_dataset"),
        help="the CIFAR-10 batches (metadata.json and cifar-10-batches-py/) or a folder of images: <class>/... "
        "folders, or train/<class>/... with test/ (or val/, validation/) beside it",
    )
    run.add_argument(
        "--architecture",
        default="net",
        help="the model: net (the notebook's CNN) or a torchvision classification model by name, such as resnet18, "
        "mobilenet_v3_small or efficientnet_b0 (an unknown name lists them all); built for the dataset's classes "
        "and image size, with random weights unless --pretrained_model gives some (nothing is downloaded)",
    )
    run.add_argument(
        "--pretrained_model",
        type=Path,
        default=None,
        help="state_dict to start from: relative to --experiments_folder (e.g. exp/run/model.pth) or absolute, "
        "or a registered version: models:/NAME/VERSION or models:/NAME@ALIAS; torchvision's published ImageNet "
        "weights for --architecture work too (a classifier head for another class count is replaced)",
    )
    run.add_argument(
        "--mlflow_tracking_uri",
        default=None,
        help=f"also log the run to this MLflow tracking server (default: ${TRACKING_URI_ENV}; neither set: no "
        "MLflow); models:/ names then come from its model registry",
    )
    add_password_option(run)

    images = parser.add_argument_group("image folders")
    images.add_argument(
        "--image_size",
        type=image_size_int,
        default=32,
        help="images are converted to this many pixels square (CIFAR-10 batches: 32 only)",
    )
    images.add_argument(
        "--test_fraction",
        type=fraction_float,
        default=0.2,
        help="a folder without a test split: this fraction of each class is the test split, drawn from --seed",
    )
    images.add_argument(
        "--skip_bad_images",
        action="store_true",
        help="train without the images that cannot be decoded (listed in run.json) instead of stopping",
    )
    images.add_argument(
        "--cache_folder",
        type=Path,
        default=None,
        help="where image folders are decoded once and kept (default: $IMAGE_CLASSIFIER_CACHE, else "
        "~/.cache/image_classifier/prepared)",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--learning_rate", type=positive_float, default=0.001, help="SGD learning rate")
    training.add_argument("--momentum", type=momentum_float, default=0.9, help="SGD momentum, in [0, 1)")
    training.add_argument(
        "--num_epochs", type=non_negative_int, default=2, help="epochs to train; 0 only evaluates the model"
    )
    training.add_argument(
        "--batch_size",
        type=positive_int,
        default=4,
        help="training mini-batch size; under torchrun, per process (the global batch is N times larger)",
    )
    training.add_argument(
        "--eval_batch_size",
        type=positive_int,
        default=1000,
        help="evaluation batch size, independent of --batch_size (it changes speed and memory, not the counts)",
    )
    training.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=2,
        help="kept from the seed for compatibility: data is held in memory and batched without worker processes, "
        "so this has no effect on speed or results",
    )
    training.add_argument("--seed", type=seed_int, default=0, help="seeds every random generator, the data order too")
    training.add_argument(
        "--augment",
        action="store_true",
        help="random crop (4 pixels of padding) and horizontal flip of every training batch, drawn from --seed",
    )
    training.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (cuda if available, else cpu), cpu, cuda or cuda:<index>",
    )
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--num_threads",
        type=non_negative_int,
        default=0,
        help="torch CPU threads; 0 picks them from the batch size: 1 below batch 128, else all cores",
    )
    speed.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep images and weights in channels-last layout (faster convolutions on CPU and GPU)",
    )
    speed.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast for forward passes (for GPUs with bf16; slower on most CPUs)",
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
    recovery.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even on another device type or GPU model, torch version or code than "
        "the run's (recorded in run.json)",
    )
    add_verbose_option(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    # Every TrainConfig field is an option of the same name. Paths stay as given (relative to the working
    # directory), so run.json holds no machine's layout.
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig) if field.name in args}
    if args.pretrained_model is not None and is_model_uri(str(args.pretrained_model)):
        # A registered version: the trainer resolves it (and checks its bytes) before any work.
        values["pretrained_model"], values["pretrained_model_uri"] = None, str(args.pretrained_model)
    elif args.pretrained_model is not None and not args.pretrained_model.is_absolute():
        values["pretrained_model"] = args.experiments_folder / args.pretrained_model
    return TrainConfig(**values)


def arguments_for(config: TrainConfig) -> list[str]:
    """The trainer's command-line arguments that give `config` back (config_from_args's inverse).

    Built from the parser itself, so an option added later is carried too. `pretrained_model` goes as the
    file it names (absolute paths stay absolute); a models:/ URI's resolution has no option, the file has.
    The password is never an argument: a child process gets it in its environment.
    """
    arguments = []
    for action in build_parser()._actions:
        if not action.option_strings or not hasattr(config, action.dest) or action.dest == "db_pass":
            continue
        value = getattr(config, action.dest)
        option = next(name for name in action.option_strings if name.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            arguments.append(option if value else f"--no-{option.removeprefix('--')}")
        elif action.nargs == 0:  # store_true
            arguments += [option] if value else []
        elif value is not None:
            arguments.append(f"{option}={value}")  # one token: a value may start with "-"
    return arguments


def check_device_exists(parser: argparse.ArgumentParser, device: str) -> None:
    """A CUDA device that is not there is a usage error; only then is torch imported before the work."""
    if not device.startswith("cuda"):
        return
    import torch

    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        parser.error("--device: PyTorch sees no CUDA device here")
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        parser.error(f"--device: there are only {count} CUDA device(s) here, cuda:0 to cuda:{count - 1}")


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (RANK in the environment), or a plain run; read without loading torch."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except UserError as exc:  # a bad --run_name or --experiment_name is a bad option value
        parser.error(str(exc))
    if config.force and not config.resume:
        parser.error("--force only applies with --resume")
    password = password_from(parser, args.db_pass)
    check_device_exists(parser, config.device)
    configure_logging(config.verbose)
    main_process = is_main_process()
    if not main_process:  # under torchrun, rank 0 alone reports progress; the others only what goes wrong
        logging.getLogger().setLevel(logging.WARNING)

    def train() -> int:
        # Imported here so that --help and usage errors answer at once, without loading torch.
        from image_classifier.trainer import run_training

        run_dir = run_training(config, password, tracking_uri_from(args.mlflow_tracking_uri))
        if main_process:
            print(f"run written to {run_dir}")
        return 0

    return exit_code_of(train)


if __name__ == "__main__":
    sys.exit(main())
