"""What every command shares: usage errors that never show a value, and answers that need no torch."""

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT, command, run_command

SECRET = "S3cr3t-do-not-echo"
# Every console script the package installs, as "module:function".
ENTRY_POINTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# ...and the `python -m` commands the README shows that are not among them.
MODULE_COMMANDS = {"python -m image_classifier.data.synthetic": "image_classifier.data.synthetic:main"}
COMMANDS = {**ENTRY_POINTS, **MODULE_COMMANDS}


def _main_of(entry_point: str):
    module, function = entry_point.split(":")
    return getattr(importlib.import_module(module), function)


def _parser_of(entry_point: str) -> argparse.ArgumentParser:
    return importlib.import_module(entry_point.split(":")[0]).build_parser()


@pytest.mark.parametrize("entry_point", sorted(COMMANDS.values()))
@pytest.mark.parametrize(
    "misspelled",
    [
        ["--db_password", SECRET],
        ["--db-pass", SECRET],
        ["--password", SECRET],
        ["--dbpass=" + SECRET],
        ["--db_password=" + SECRET],
        ["--db=" + SECRET],  # an abbreviation of --db_pass: abbreviations are off
        ["--d=" + SECRET],  # ambiguous in stock argparse, whose message quotes it whole
        ["--db_password", "--" + SECRET],
        ["--pasword", SECRET, "--verbose"],
        # issue 14: glued to the option, option and value in one argument, a value given to a flag
        ["--db_pass" + SECRET],
        ["--db_pass " + SECRET],
        ["--db_pass\t" + SECRET],
        ["--verbose=" + SECRET],
        ["-v" + SECRET],
        ["-v=" + SECRET],
        ["--help=" + SECRET],
        ["-h" + SECRET],
    ],
)
def test_no_usage_error_shows_a_misplaced_value(entry_point, misspelled, capsys, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "x")  # so that only the misspelling can be the usage error
    with pytest.raises(SystemExit) as exit_info:
        _main_of(entry_point)(misspelled)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert SECRET not in captured.err + captured.out
    assert "error:" in captured.err


TRAINER = ["--experiment_name", "e", "--run_name", "r"]


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("image_classifier_trainer", [*TRAINER, "--resume=" + SECRET], "argument --resume takes no value"),
        ("image_classifier_trainer", [*TRAINER, "--no-channels_last=" + SECRET], "--no-channels_last takes no value"),
        ("image_classifier_trainer", [*TRAINER, "--seed", SECRET], "invalid value for --seed (not shown)"),
        ("image_classifier_trainer", [*TRAINER, "--seed=-1" + SECRET], "invalid value for --seed (not shown)"),
        ("image_classifier_trainer", [*TRAINER, "--momentum", SECRET], "invalid value for --momentum (not shown)"),
        ("image_classifier_trainer", [*TRAINER, "--device", SECRET], "invalid value for --device (not shown)"),
        ("image_classifier_trainer", [*TRAINER, "--seed", "-" + SECRET], "argument --seed: expected a value"),
        ("image_classifier_trainer", ["--experiment_name", SECRET + "/..", "--run_name", "r"], "--experiment_name"),
        ("image_classifier_trainer", [*TRAINER[:3], SECRET + ".incomplete"], "invalid value for --run_name"),
        ("image_classifier_trainer", [*TRAINER, "--db_pass " + SECRET], "pass --db_pass VALUE as two arguments"),
        ("image_classifier_trainer", [*TRAINER, "--db_pass" + SECRET], "it starts with --db_pass"),
        ("image_classifier_runs", [SECRET], "invalid value for COMMAND (not shown): choose from list, show,"),
        ("image_classifier_runs", ["list", "--format", SECRET], "invalid value for --format (not shown)"),
        ("image_classifier_runs", ["list", "--sort=" + SECRET], "invalid value for --sort (not shown)"),
        ("image_classifier_runs", ["list", "--descending=" + SECRET], "--descending takes no value"),
        ("image_classifier_runs", ["alias", "n", "a", SECRET], "invalid value for version (not shown)"),
        ("image_classifier_runs", ["show", "e/r", "--format" + SECRET], "it starts with --format"),
        ("image_classifier_runs", ["--experiments_folder", SECRET, "list"], "an option of a subcommand"),
        ("image_classifier_predict", ["--model", "m", "x.png", "--top_k", SECRET], "invalid value for --top_k"),
        ("image_classifier_predict", ["--model", "m", "x.png", "--classes", SECRET], "invalid value for --classes"),
        ("image_classifier_predict", ["--model", "m", "x.png", "--format=" + SECRET], "invalid value for --format"),
        ("image_classifier_serve", ["--model", "m", "--port", SECRET], "invalid value for --port (not shown)"),
        ("image_classifier_serve", ["--model", "m", "--access_log=" + SECRET], "--access_log takes no value"),
        ("python -m image_classifier.data.synthetic", ["--output", "o", "--seed", SECRET], "invalid value for --seed"),
    ],
)
def test_a_refused_value_is_named_by_its_option_never_shown(name, argv, message, capsys, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "x")
    with pytest.raises(SystemExit) as exit_info:
        _main_of(COMMANDS[name])(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert SECRET not in captured.err + captured.out
    assert message in captured.err


def test_a_stray_value_is_not_echoed_either(capsys, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "x")
    with pytest.raises(SystemExit) as exit_info:
        _main_of(ENTRY_POINTS["image_classifier_trainer"])([*TRAINER, SECRET])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and SECRET not in captured.err + captured.out
    assert "unrecognized arguments: 1 argument(s), not shown" in captured.err


def test_the_error_gives_the_position_and_suggests_the_known_option(capsys):
    with pytest.raises(SystemExit):
        _main_of(ENTRY_POINTS["image_classifier_trainer"])([*TRAINER, "--learning_rat", SECRET])
    err = capsys.readouterr().err
    assert "unrecognized option in argument 5 (not shown; did you mean --learning_rate?)" in err


def test_flags_written_together_still_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main_of(ENTRY_POINTS["image_classifier_trainer"])(["-vh"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_a_value_that_starts_with_a_dash_goes_after_an_equals_sign():
    args = _parser_of(ENTRY_POINTS["image_classifier_trainer"]).parse_args([*TRAINER, "--db_pass=-" + SECRET])
    assert args.db_pass == "-" + SECRET
    # argparse takes an argument with a space in it as a value, also when it starts with '-'
    args = _parser_of(ENTRY_POINTS["image_classifier_trainer"]).parse_args([*TRAINER, "--db_pass", "-a b"])
    assert args.db_pass == "-a b"


def test_a_commands_own_usage_error_is_blanked_too(capsys):
    """The last guard: a message that repeats an argument (a command's own `parser.error`) loses it."""
    parser = _parser_of(ENTRY_POINTS["image_classifier_trainer"])
    parser.parse_args([*TRAINER, "--dataset_folder", "data", "--db_pass", SECRET])
    with pytest.raises(SystemExit):
        parser.error(f"the database password {SECRET!r} is wrong")
    assert capsys.readouterr().err.endswith("error: the database password '(not shown)' is wrong\n")


# --- the property: whatever the spelling, no value reaches the output of a usage error ---

MARK = "QZX"  # every generated value holds it at both ends; no text of the package does
# (command, the arguments before the generated ones, whether one more positional is a usage error)
CONTEXTS = [
    ("image_classifier_trainer", TRAINER, True),
    ("image_classifier_reproduce", ["experiments/e/r"], True),
    ("image_classifier_runs", [], True),
    ("image_classifier_runs", ["list"], True),
    ("image_classifier_runs", ["show", "e/r"], True),
    ("image_classifier_runs", ["compare", "e/a", "e/b"], False),
    ("image_classifier_runs", ["register", "e/r", "--name", "n"], True),
    ("image_classifier_runs", ["alias", "n", "a", "1"], True),
    ("image_classifier_runs", ["models", "n"], True),
    ("image_classifier_predict", ["--model", "m", "x.png"], False),
    ("image_classifier_serve", ["--model", "m"], True),
    ("python -m image_classifier.data.synthetic", ["--output", "o"], True),
]
SEPARATORS = [" ", "=", ",", "\t", "\n", "/", ":", "@", "\u00a0", "\u2003"]

_piece = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)


@st.composite
def secret_values(draw) -> str:
    """Text a password could be: any characters, with the mark at both ends of every part that a
    separator (space, '=', ',', ...) could cut off; sometimes starting with a dash."""
    parts = draw(st.lists(_piece.filter(lambda p: not any(s in p for s in SEPARATORS)), min_size=1, max_size=3))
    joined = draw(st.sampled_from(SEPARATORS)).join(MARK + part + MARK for part in parts)
    return draw(st.sampled_from(["", "-", "--"])) + joined


def _reader(parser: argparse.ArgumentParser, context: list[str]) -> argparse.ArgumentParser:
    """The parser that reads what follows `context`: a subcommand's, when the context names one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and context and context[0] in action.choices:
            return action.choices[context[0]]
    return parser


def _accepted(action: argparse.Action, value: str) -> bool:
    try:
        converted = action.type(value) if action.type is not None else value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return action.choices is None or converted in action.choices


@st.composite
def misspellings(draw, parser: argparse.ArgumentParser, stray_is_error: bool) -> list[str]:
    options = parser._option_string_actions
    longs = sorted(name for name in options if name.startswith("--"))
    flags = sorted(name for name, action in options.items() if action.nargs == 0)
    short_flags = [name for name in flags if not name.startswith("--")]
    typed = sorted(
        name
        for name, action in options.items()
        if action.nargs != 0 and (action.choices is not None or action.type not in (None, str, Path))
    )
    value = draw(secret_values())

    def unknown(name: str) -> bool:
        return name not in options and name.partition("=")[0] not in options

    known = draw(st.sampled_from(longs))
    mutated = draw(
        st.sampled_from(
            [
                known + draw(st.text("abcxyz_-", min_size=1, max_size=3)),
                known.replace("_", "-") if "_" in known else known + "-",
                known.upper(),
                known[:-1],  # an abbreviation...
                known[: draw(st.integers(3, max(3, len(known) - 1)))],  # ...of any length
                "-" + draw(st.sampled_from("abcdefgijklmnopqrstuwxyz")),
                "--" + draw(_piece.filter(lambda p: p and "=" not in p)),
                "--" + MARK + draw(_piece) + MARK,  # a password typed where an option goes
            ]
        )
    )
    kind = draw(
        st.sampled_from(["unknown", "unknown=", "glued", "flag=", "short", "joined", "typed", "typed=", "stray"])
    )
    if kind in ("unknown", "unknown=") and unknown(mutated):
        return [mutated, value] if kind == "unknown" else [f"{mutated}={value}"]
    if kind == "glued" or (kind == "short" and not short_flags) or (kind == "flag=" and not flags):
        return [known + value.lstrip("-=")]
    if kind == "flag=":
        return [f"{draw(st.sampled_from(flags))}={value}"]
    if kind == "short":
        return [draw(st.sampled_from(short_flags)) + draw(st.sampled_from(["", "="])) + value.lstrip("-")]
    if kind in ("typed", "typed=") and typed:
        option = draw(st.sampled_from(typed))
        assume(not _accepted(options[option], value))
        return [option, value] if kind == "typed" else [f"{option}={value}"]
    if kind == "stray" and stray_is_error:
        return [value]
    space = draw(st.sampled_from([" ", "\t", "  ", "\u2003"]))
    return [draw(st.sampled_from(sorted(options))) + space + value]


@given(data=st.data())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_usage_error_of_any_command_shows_any_value(data):
    name, context, stray_is_error = data.draw(st.sampled_from(CONTEXTS), label="command")
    parser = _parser_of(COMMANDS[name])
    argv = context + data.draw(misspellings(_reader(parser, context), stray_is_error), label="argv")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2, (argv, err.getvalue())
    assert MARK not in out.getvalue() + err.getvalue()
    assert "error:" in err.getvalue()


# --- the installed commands, as a user runs them ---


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, argv",
    [
        ("image_classifier_trainer", ["--db_pass" + SECRET]),
        ("image_classifier_trainer", [*TRAINER, "--db_pass " + SECRET]),
        ("image_classifier_trainer", [*TRAINER, "--resume=" + SECRET]),
        ("image_classifier_trainer", [*TRAINER, "--seed", SECRET]),
        ("image_classifier_reproduce", ["run", "--verbose=" + SECRET]),
        ("image_classifier_runs", [SECRET]),
        ("image_classifier_runs", ["list", "--format", SECRET]),
        ("image_classifier_predict", ["--model", "m", "x.png", "--top_k=" + SECRET]),
        ("image_classifier_serve", ["--model", "m", "--port" + SECRET]),
        ("python -m image_classifier.data.synthetic", ["--output", "o", "--seed=" + SECRET]),
        ("python -m image_classifier.main", [*TRAINER, "--db_pass\u2003" + SECRET]),
    ],
)
def test_the_installed_commands_show_no_value(name, argv, tmp_path):
    program = [sys.executable, "-m", name.split()[-1]] if name.startswith("python -m") else [command(name)]
    result = run_command([*program, *argv], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "error:" in result.stderr


def _modules_after(entry_point: str, argv: list[str]) -> subprocess.CompletedProcess:
    module, function = entry_point.split(":")
    code = (
        "import sys\n"
        f"from {module} import {function} as main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS.values()))
@pytest.mark.parametrize("argv", [["--help"], ["--no_such_option"], ["--verbose=" + SECRET]])
def test_help_and_usage_errors_answer_without_importing_torch(entry_point, argv):
    result = _modules_after(entry_point, argv)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr
