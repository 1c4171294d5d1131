"""List, inspect and compare recorded runs, and name their models: `image_classifier_runs`.

Copy-paste examples:

    image_classifier_runs list                                   # every run under experiments/
    image_classifier_runs list --experiment local_exp --sort test_accuracy --descending --format csv
    image_classifier_runs list --wide                            # every column: hyperparameters, hashes...
    image_classifier_runs show local_exp/run_1                   # add --full for every hash
    image_classifier_runs compare local_exp/run_1 local_exp/run_2 --plot compare.png
    image_classifier_runs register local_exp/run_1 --name cifar-net --alias production
    image_classifier_runs alias cifar-net production 2
    image_classifier_runs models cifar-net

With --mlflow_tracking_uri (or $MLFLOW_TRACKING_URI), register, alias and models use MLflow's model
registry instead of experiments/registry.json. Nothing here imports torch.

This module is the command: its parser, one configuration per subcommand (`runs_configs.py`) and the
dispatch. Each subcommand has its own module (`runs_list.py`, `runs_show.py`, `runs_compare.py`,
`runs_models.py`), and what they print is formatted apart (`tables.py`, `show_text.py`, `comparison.py`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from image_classifier import __version__
from image_classifier.cli import add_verbose_option, configure_logging, exit_code_of, positive_int
from image_classifier.cli_parser import ArgumentParser
from image_classifier.tracking.runs_compare import compare_command
from image_classifier.tracking.runs_configs import (
    AliasConfig,
    CompareConfig,
    ListConfig,
    ModelsConfig,
    RegisterConfig,
    ShowConfig,
)
from image_classifier.tracking.runs_list import LIST_COLUMNS, list_command
from image_classifier.tracking.runs_models import alias_command, models_command, register_command
from image_classifier.tracking.runs_show import show_command
from image_classifier.tracking.uri import TRACKING_URI_ENV, redacted, tracking_uri_from

logger = logging.getLogger(__name__)


def _common_options() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--experiments_folder", type=Path, default=Path("experiments"), help="where the runs are (as in the trainer)"
    )
    add_verbose_option(common)
    return common


def _tracking_option() -> argparse.ArgumentParser:
    tracking = ArgumentParser(add_help=False)
    tracking.add_argument(
        "--mlflow_tracking_uri",
        default=None,
        help=f"MLflow tracking server whose model registry to use (default: ${TRACKING_URI_ENV}; "
        "neither set: the registry file in the experiments folder)",
    )
    return tracking


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="image_classifier_runs",
        description="List, show and compare the runs in an experiments folder; register their models as "
        "named versions and move aliases.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, tracking = _common_options(), _tracking_option()
    formats = ("table", "csv", "json")

    listing = commands.add_parser(
        "list",
        parents=[common, tracking],
        help="one row per run",
        description="One " "row per run, finished or not; unreadable runs are listed with the reason.",
    )
    listing.add_argument("--experiment", default=None, help="only this experiment's runs (default: all)")
    listing.add_argument("--sort", choices=LIST_COLUMNS, default="started", help="the column to sort by")
    listing.add_argument("--descending", action="store_true", help="largest first (runs without a value stay last)")
    listing.add_argument("--format", choices=formats, default="table", help="output format")
    listing.add_argument(
        "--wide",
        action="store_true",
        help="the table with every column (architecture, hyperparameters, duration, model sha256), as CSV and "
        "JSON have them",
    )

    show = commands.add_parser(
        "show",
        parents=[common, tracking],
        help="one run in full",
        description="A run's arguments, environment, metrics per epoch and files.",
    )
    show.add_argument("run", help="EXPERIMENT/RUN")
    show.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    show.add_argument(
        "--full",
        action="store_true",
        help="the text with every value in full: each hash whole, the lock files' and dataset files' hashes, "
        "every epoch (JSON always has them)",
    )

    compare = commands.add_parser(
        "compare",
        parents=[common],
        help="runs side by side",
        description="The arguments that differ, final metrics with their differences "
        "to the first run, and per-class accuracy, side by side.",
    )
    compare.add_argument("runs", nargs="+", metavar="EXPERIMENT/RUN", help="two or more runs")
    compare.add_argument(
        "--plot", type=Path, default=None, help="also write their loss and accuracy curves to " "this PNG file"
    )
    compare.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    register = commands.add_parser(
        "register",
        parents=[common, tracking],
        help="add a run's model as a version",
        description="Add a completed run's model.pth as the next version of NAME.",
    )
    register.add_argument("run", help="EXPERIMENT/RUN, a completed run")
    register.add_argument("--name", required=True, help="model name (letters, digits, . _ -); required")
    register.add_argument(
        "--alias",
        action="append",
        default=[],
        dest="aliases",
        help="an alias to point at the new version (e.g. production); repeatable",
    )

    alias = commands.add_parser(
        "alias",
        parents=[common, tracking],
        help="point an alias at a version",
        description="Point ALIAS of model NAME at VERSION (moving it if it was elsewhere).",
    )
    alias.add_argument("name", help="model name")
    alias.add_argument("alias", help="alias (letters, digits, . _ -; not a number, not 'latest')")
    alias.add_argument("version", type=positive_int, help="version number")

    models = commands.add_parser(
        "models",
        parents=[common, tracking],
        help="registered models and versions",
        description="Registered models: versions, aliases, source runs, test accuracy.",
    )
    models.add_argument("name", nargs="?", default=None, help="only this model (default: all)")
    models.add_argument("--format", choices=formats, default="table", help="output format")
    return parser


def config_from_args(args: argparse.Namespace):
    folder = args.experiments_folder
    uri = tracking_uri_from(getattr(args, "mlflow_tracking_uri", None))
    if args.command == "list":
        return ListConfig(folder, uri, args.experiment, args.sort, args.descending, args.format, args.wide)
    if args.command == "show":
        return ShowConfig(folder, uri, args.run, args.format, args.full)
    if args.command == "compare":
        return CompareConfig(folder, tuple(args.runs), args.plot, args.format)
    if args.command == "register":
        return RegisterConfig(folder, uri, args.run, args.name, tuple(args.aliases))
    if args.command == "alias":
        return AliasConfig(folder, uri, args.name, args.alias, args.version)
    return ModelsConfig(folder, uri, args.name, args.format)


COMMANDS: dict[type, Callable] = {
    ListConfig: list_command,
    ShowConfig: show_command,
    CompareConfig: compare_command,
    RegisterConfig: register_command,
    AliasConfig: alias_command,
    ModelsConfig: models_command,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and len(args.runs) < 2:
        parser.error("compare needs two or more runs")
    configure_logging(args.verbose)
    config = config_from_args(args)
    uri = getattr(config, "tracking_uri", None)
    if uri:
        logger.debug("MLflow tracking server %s", redacted(uri))
    try:
        return exit_code_of(lambda: COMMANDS[type(config)](config))
    except BrokenPipeError:
        # The reader stopped early (`| head`): not an error. Point stdout at /dev/null so that Python's
        # final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
