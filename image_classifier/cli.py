"""What every command shares: its argument parser, logging, the password, and turning errors into exit codes.

Nothing here imports torch, so `--help` and usage errors answer at once in every command.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm

from image_classifier.data.database import Secret
from image_classifier.errors import TrainingInterrupted, UserError

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DB_PASSWORD"
USAGE_EXIT_CODE = 2  # argparse's own code for usage errors
# torch.manual_seed takes any integer that fits in 64 bits; the trainer takes the non-negative ones.
MAX_SEED = 2**64 - 1

_NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?([eE][-+]?\d+)?")


def checked(convert: Callable, accept: Callable, requirement: str) -> Callable:
    """An argparse `type` that converts with `convert` and accepts only values for which `accept` holds."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {convert.__name__}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "zero or more")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a finite number greater than 0")
seed_int = checked(int, lambda v: 0 <= v <= MAX_SEED, f"a seed from 0 to {MAX_SEED} (2**64 - 1)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" where there is a default to show (0 included), not "None" on bare flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of `parser` and of its subcommands, with the action it belongs to."""
    actions = dict(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                actions.update(_option_actions(subparser))
    return actions


def _describe_unknown(tokens: Sequence[str], known: dict[str, argparse.Action]) -> str:
    """Name unknown options without ever showing a value: whatever follows an unknown option may be its
    value (a password under a misspelled option), and so may anything that is not an option at all."""
    names, hidden, after_unknown = [], 0, False
    for token in tokens:
        is_option = token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.fullmatch(token)
        if is_option and not after_unknown:
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, [k for k in known if k.startswith("--")], n=1)
            names.append(f"{name} (did you mean {close[0]}?)" if close else name)
            hidden += "=" in token
            after_unknown = "=" not in token
        else:
            hidden += 1
            after_unknown = False
    if not names:
        return f"{hidden} argument(s), not shown"
    return ", ".join(names) + (f" and {hidden} value(s), not shown" if hidden else "")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a usage error never echoes what followed an unknown option.

    Stock argparse prints "unrecognized arguments: --db_password S", and abbreviated or ambiguous options
    ("--d=S") end up in its messages with their values; here abbreviations are off and unknown options are
    found before parsing, so every message names options only.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:
        tokens = list(sys.argv[1:] if args is None else args)
        unknown = self._unknown_options(tokens)
        if unknown:
            self.error(f"unrecognized arguments: {unknown}")
        namespace, extras = self.parse_known_args(tokens, namespace)
        if extras:
            self.error(f"unrecognized arguments: {_describe_unknown(extras, _option_actions(self))}")
        return namespace

    def _unknown_options(self, tokens: list[str]) -> str:
        known = _option_actions(self)
        unknown_from = None
        takes_value = False
        for index, token in enumerate(tokens):
            if token == "--":
                break
            if takes_value:  # the value of a known option, whatever it looks like
                takes_value = False
                continue
            if not token.startswith("-") or token == "-" or _NEGATIVE_NUMBER.fullmatch(token):
                continue
            action = known.get(token.split("=", 1)[0])
            if action is None:
                unknown_from = index
                break
            takes_value = "=" not in token and action.nargs != 0
        if unknown_from is None:
            return ""
        return _describe_unknown(tokens[unknown_from:], known)


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
