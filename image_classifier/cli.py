"""What every command shares: its argument parser, logging, the password, and turning errors into exit codes.

Nothing here imports torch, so `--help` and usage errors answer at once in every command.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm

from image_classifier.errors import TrainingInterrupted, UserError
from image_classifier.secret import Secret

logger = logging.getLogger(__name__)

PASSWORD_ENV = "DB_PASSWORD"
USAGE_EXIT_CODE = 2  # argparse's own code for usage errors
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
# What stock types accept, for the usage error of a bad value.
_TYPE_REQUIREMENTS = {int: "a whole number", float: "a number"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" where there is a default to show (0 included), not "None" on bare flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        # A hyphen spelling kept for earlier versions (--train-size beside --train_size) works, unlisted.
        shown = [s for s in action.option_strings if not _is_hyphen_alias(s, action.option_strings)]
        if len(shown) == len(action.option_strings):
            return super()._format_action_invocation(action)
        return super()._format_action_invocation(_with_strings(action, shown))


def _is_hyphen_alias(option: str, option_strings: Sequence[str]) -> bool:
    """--train-size when --train_size is a spelling of the same option."""
    return option.startswith("--") and "-" in option[2:] and "--" + option[2:].replace("-", "_") in option_strings


def _with_strings(action: argparse.Action, option_strings: list[str]) -> argparse.Action:
    shown = copy.copy(action)
    shown.option_strings = option_strings
    return shown


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: subparser
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, subparser in action.choices.items()
    }


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of `parser` and of its subcommands, with the action it belongs to."""
    actions = dict(parser._option_string_actions)
    for subparser in _subcommands(parser).values():
        actions.update(_option_actions(subparser))
    return actions


def _own_words(parser: argparse.ArgumentParser) -> set[str]:
    """What a command line may hold that is the parser's own text, not the user's: option strings,
    subcommand names and choices."""
    words = set(_option_actions(parser))
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if action.choices is not None:
                words.update(map(str, action.choices))
        stack.extend(_subcommands(current).values())
    return words


def _name_of(action: argparse.Action) -> str:
    """--long_name of an option (its first long spelling), else the name of a positional."""
    if action.option_strings:
        return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    if isinstance(action.metavar, str):
        return action.metavar
    return action.dest


def invalid_value(action: argparse.Action) -> str:
    """The usage error of a value `action` refuses, naming what it accepts and never the value."""
    if action.choices is not None:
        accepted = "choose from " + ", ".join(map(str, action.choices))
    else:
        requirement = getattr(action.type, "requirement", None) or _TYPE_REQUIREMENTS.get(action.type)
        accepted = f"expected {requirement}" if requirement else ""
    return f"invalid value for {_name_of(action)} (not shown)" + (f": {accepted}" if accepted else "")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a usage error never shows a value from the command line.

    A value may be a password typed in the wrong place: under a misspelled option (`--db_password S`),
    glued to an option (`--db_passS`), in one argument with its option (`"--db_pass S"`, as exec-form YAML
    gives it), given to a flag (`--verbose=S`), or refused by a type or a list of choices. Stock argparse
    repeats all of these. Here the command line is checked before argparse reads it, in argparse's own
    terms (an argument is an option when it starts with '-'), and every message names options and
    positions only; abbreviations are off. As a last guard, `error` blanks any argument of the command
    line that a message would still contain.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._given: list[str] = []
        self._position = 0  # of this parser's first argument on the whole command line (subcommands)
        # For a subcommand's parser: its name and the options of its sibling subcommands, so that an option
        # given to the wrong subcommand is named as such rather than as an unknown one.
        self._subcommand_name = ""
        self._sibling_options: dict[str, list[str]] = {}

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # stray values, or whatever followed "--"
            self.error(f"unrecognized arguments: {len(extras)} argument(s), not shown")
        return namespace

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        tokens = list(sys.argv[1:] if args is None else args)
        self._given = tokens
        problem = self._first_problem(tokens)
        if problem:
            self.error(problem)
        return super().parse_known_args(tokens, namespace)

    def error(self, message: str):
        super().error(self._without_arguments(message))

    # --- what argparse itself would report with a value in it ---

    def _looks_like_option(self, token: str) -> bool:
        """argparse's reading: an argument starting with '-' is an option, unless it is '-' alone or a
        negative number (in a parser without options that look like negative numbers)."""
        if len(token) < 2 or token[0] not in self.prefix_chars:
            return False
        negative = self._negative_number_matcher.match(token) and not self._has_negative_number_optionals
        return not negative

    def _option_of(self, token: str) -> tuple[str, bool]:
        """The option string `token` names ("" for none), and whether it carries a value (--name=value,
        -xvalue)."""
        actions = self._option_string_actions
        if token in actions:
            return token, False
        name, equals, _ = token.partition("=")
        if equals and name in actions:
            return name, True
        if token[1] not in self.prefix_chars and token[:2] in actions:
            return token[:2], True
        return "", False

    def _combined_flags(self, token: str) -> bool:
        """-vh: single-letter flags written together, which argparse reads one by one."""
        if token[1] in self.prefix_chars:
            return False
        actions = [self._option_string_actions.get(token[0] + letter) for letter in token[1:]]
        return all(action is not None and action.nargs == 0 for action in actions)

    def _first_problem(self, tokens: Sequence[str]) -> str:
        expects_value: argparse.Action | None = None  # the option before, when it takes a value
        for index, token in enumerate(tokens):
            position = self._position + index + 1
            if token == "--":
                return ""
            if not self._looks_like_option(token):
                subcommand = _subcommands(self).get(token)
                if subcommand is not None and expects_value is None:
                    subcommand._position, subcommand._given = position, list(tokens[index + 1 :])
                    subcommand._subcommand_name = token
                    subcommand._sibling_options = {
                        name: sorted(_option_actions(sibling)) for name, sibling in _subcommands(self).items()
                    }
                    return subcommand._first_problem(tokens[index + 1 :])
                expects_value = None
                continue
            option, carries_value = self._option_of(token)
            action = self._option_string_actions.get(option)
            if action is None:
                if expects_value is not None and any(c.isspace() for c in token):
                    expects_value = None  # "-a b" after --option: argparse takes it as that option's value
                    continue
                return self._unknown(token, position, expects_value)
            if carries_value and action.nargs == 0 and not self._combined_flags(token):
                return f"argument {option} takes no value; argument {position} gives it one (not shown)"
            expects_value = action if not carries_value and action.nargs != 0 else None
        return ""

    def _unknown(self, token: str, position: int, expects_value: argparse.Action | None) -> str:
        if expects_value is not None:
            name = _name_of(expects_value)
            return (
                f"argument {name}: expected a value; argument {position} looks like an option (not shown): "
                f"give a value that starts with '-' as {name}=VALUE"
            )
        known = _option_actions(self)
        head, separator = re.match(r"([^\s=]*)(.?)", token, re.DOTALL).groups()
        if head in known and not separator.isspace():  # an option of another subcommand than this one
            return f"{head} in argument {position} is an option of a subcommand: it goes after the subcommand"
        if head in known:
            return (
                f"argument {position} holds an option and a value in one (not shown): pass {head} VALUE as two "
                f"arguments, or {head}=VALUE"
            )
        owners = [name for name, options in self._sibling_options.items() if head in options]
        if owners:  # an option of another subcommand: its name is the parser's own text, safe to show
            return (
                f"{head} in argument {position} is not an option of {self._subcommand_name} "
                f"(it is one of {', '.join(owners)})"
            )
        prefix = max(
            (name for name in known if 2 < len(name) < len(head) and head.startswith(name)), key=len, default=None
        )
        if prefix is not None:
            return (
                f"unrecognized option in argument {position} (not shown): it starts with {prefix}; give its value "
                f"as {prefix} VALUE or {prefix}=VALUE"
            )
        # Never the option itself: "did you mean --format?" for --format tells nothing.
        candidates = [name for name in known if name.startswith("--") and name != head]
        close = difflib.get_close_matches(head, candidates, n=1)
        return f"unrecognized option in argument {position} (not shown" + (
            f"; did you mean {close[0]}?)" if close else ")"
        )

    # --- values argparse refuses ---

    def _get_value(self, action: argparse.Action, arg_string: str):
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError:
            raise argparse.ArgumentError(None, invalid_value(action)) from None

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(None, invalid_value(action))

    # --- the last guard ---

    def _without_arguments(self, message: str) -> str:
        """`message` with every user-given argument (and the value part of --name=value) blanked out.

        The checks above keep values out of messages; this catches a message written elsewhere (a
        command's own `parser.error(...)`) that repeats one. An argument is blanked where it stands as a
        word of its own (`data` stays in "database"); one shorter than 3 characters is left alone.
        """
        own = _own_words(self)
        values = set()
        for token in self._given:
            name, equals, value = token.partition("=")
            values.update((value,) if equals and name in own else (token, *re.split(r"[\s=]+", token)))
        spellings = {form for value in values - own for form in (value, repr(value)[1:-1]) if len(form) >= 3}
        for form in sorted(spellings, key=len, reverse=True):
            before = r"(?<![^\W_])" if form[0].isalnum() else ""
            after = r"(?![^\W_])" if form[-1].isalnum() else ""
            message = re.sub(before + re.escape(form) + after, "(not shown)", message)
        return message


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
