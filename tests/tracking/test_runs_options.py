"""Every option of every `image_classifier_runs` subcommand, as its help and the README document it, is
accepted where users write it: after the positionals. An option given to the wrong subcommand is named as such."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from image_classifier.tracking.runs import build_parser, main
from tests.conftest import REPO_ROOT
from tests.documentation import all_text

# A value each positional and each option-with-a-value accepts, by its dest.
SAMPLE_VALUES = {"run": "e/r", "runs": "e/a", "name": "n", "alias": "production", "version": "2"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _sample(action: argparse.Action) -> list[str]:
    if action.nargs == 0:
        return []
    if action.choices is not None:
        return [str(list(action.choices)[-1])]
    return [SAMPLE_VALUES.get(action.dest, "x")]


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    """The positionals, then the required options (register's --name)."""
    values = []
    for action in parser._actions:
        if not action.option_strings:
            values += _sample(action) * (2 if action.nargs == "+" else 1)  # compare takes two runs or more
    for action in parser._actions:
        if action.option_strings and action.required:
            values += [action.option_strings[0], *_sample(action)]
    return values


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    return [
        (string, action)
        for action in parser._actions
        for string in action.option_strings
        if string.startswith("--") and string != "--help"
    ]


CASES = [(name, option) for name, parser in _subcommands().items() for option, _ in _options(parser)]


@pytest.mark.parametrize("subcommand, option", CASES)
def test_every_option_of_every_subcommand_is_accepted_after_the_positionals(subcommand, option):
    parser = _subcommands()[subcommand]
    action = dict(_options(parser))[option]
    argv = [subcommand, *_positionals(parser), option, *_sample(action)]
    args = build_parser().parse_args(argv)
    assert args.command == subcommand
    if action.nargs != 0 and action.dest != "aliases":
        assert str(getattr(args, action.dest)) == _sample(action)[0]


def test_compare_answers_in_json_too():
    # The newcomer's command line: refused as an unknown option before compare had --format.
    args = build_parser().parse_args(["compare", "e/a", "e/b", "--format", "json"])
    assert args.format == "json"


def _readme_runs_command_lines() -> list[list[str]]:
    """Every `image_classifier_runs ...` command line of the code blocks of the README and docs/ and of the module's
    docstring, without comments, redirections and what follows `&&` or `&`."""
    text = all_text() + (REPO_ROOT / "image_classifier/tracking/runs.py").read_text()
    lines = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.DOTALL) + [text]:
        for line in block.splitlines():
            start = line.find("image_classifier_runs ")
            if start < 0 or "`" in line[start:]:  # inline code in prose is read from the code blocks
                continue
            words = shlex.split(line[start:].split("#")[0].split("&&")[0].split(" & ")[0].split(">")[0])
            if words[1:] not in lines:
                lines.append(words[1:])
    return lines


README_LINES = _readme_runs_command_lines()


def test_the_readme_shows_runs_command_lines():
    assert len(README_LINES) >= 10 and ["compare", "local_exp/run_1", "local_exp/run_2", "--format", "json"] in [
        line[:5] for line in README_LINES
    ]


@pytest.mark.parametrize("argv", README_LINES, ids=" ".join)
def test_every_documented_runs_command_line_parses(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


@pytest.mark.parametrize("subcommand", sorted(_subcommands()))
def test_an_option_of_another_subcommand_is_named_so_never_suggested_as_itself(subcommand, capsys):
    subcommands = _subcommands()
    own = {option for option, _ in _options(subcommands[subcommand])}
    others = {option for name, parser in subcommands.items() if name != subcommand for option, _ in _options(parser)}
    for option in sorted(others - own):
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, *_positionals(subcommands[subcommand]), option, "x"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert f"{option} in argument" in err and f"is not an option of {subcommand}" in err, err
        assert f"did you mean {option}?" not in err
