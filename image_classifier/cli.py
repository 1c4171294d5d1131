"""What every command shares: option types, the password, logging, and turning errors into exit codes.

The argument parser itself (which never shows a value in a usage error) is `cli_parser.py`; the password
travels as a `secret.Secret`. Nothing here imports torch, so `--help` and usage errors answer at once in
every command.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable

from tqdm import tqdm

from image_classifier.errors import TrainingInterrupted, UserError
from image_classifier.secret import Secret

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DB_PASSWORD"
# torch.manual_seed takes any integer that fits in 64 bits; the trainer takes the non-negative ones.
MAX_SEED = 2**64 - 1


def described(requirement: str) -> Callable[[Callable], Callable]:
    """Name what an argparse `type` accepts; a usage error says it instead of repeating the value."""

    def describe(convert: Callable) -> Callable:
        convert.requirement = requirement
        return convert

    return describe


def checked(convert: Callable, accept: Callable, requirement: str) -> Callable:
    """An argparse `type` that converts with `convert` and accepts only values for which `accept` holds."""

    @described(requirement)
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {requirement}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"not {requirement}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "a whole number of 0 or more")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a finite number greater than 0")
seed_int = checked(int, lambda v: 0 <= v <= MAX_SEED, f"a seed from 0 to {MAX_SEED} (2**64 - 1)")


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")


def add_password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db_pass",
        default=None,
        help=f"password of the (mocked) database; prefer the {PASSWORD_ENV} environment variable, which keeps it "
        "off the command line. One of the two is required",
    )


def password_from(parser: argparse.ArgumentParser, db_pass: str | None) -> Secret:
    """The --db_pass value, else $DB_PASSWORD; neither is a usage error (exit 2)."""
    password = db_pass if db_pass is not None else os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"the database password is required: set {PASSWORD_ENV} or pass --db_pass")
    return Secret(password)


class _TqdmHandler(logging.StreamHandler):
    """Write log records above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure_logging(verbose: bool) -> None:
    """Called once, by each command's `main()`."""
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    # Replace our own handler only: calling main() twice in one process must not log everything twice.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _TqdmHandler)] + [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "urllib3", "mlflow", "alembic", "httpx", "multipart"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
