"""What every command shares: usage errors that never echo a secret, and answers that need no torch."""

import importlib
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO_ROOT

SECRET = "S3cr3t-do-not-echo"
# Every console script the package installs, as "module:function".
ENTRY_POINTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _main_of(entry_point: str):
    module, function = entry_point.split(":")
    return getattr(importlib.import_module(module), function)


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS.values()))
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
    ],
)
def test_no_usage_error_echoes_what_follows_an_unknown_option(entry_point, misspelled, capsys, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "x")  # so that only the misspelling can be the usage error
    with pytest.raises(SystemExit) as exit_info:
        _main_of(entry_point)(misspelled)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert SECRET not in captured.err + captured.out
    assert "error:" in captured.err


def test_a_stray_value_is_not_echoed_either(capsys, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "x")
    with pytest.raises(SystemExit) as exit_info:
        _main_of(ENTRY_POINTS["image_classifier_trainer"])(["--experiment_name", "e", "--run_name", "r", SECRET])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and SECRET not in captured.err + captured.out
    assert "unrecognized arguments: 1 argument(s), not shown" in captured.err


def test_the_error_names_the_unknown_option_and_suggests_the_known_one(capsys):
    with pytest.raises(SystemExit):
        _main_of(ENTRY_POINTS["image_classifier_trainer"])(["--db_password", SECRET])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --db_password (did you mean --db_pass?) and 1 value(s), not shown" in err


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
@pytest.mark.parametrize("argv", [["--help"], ["--no_such_option"]])
def test_help_and_usage_errors_answer_without_importing_torch(entry_point, argv):
    result = _modules_after(entry_point, argv)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr
