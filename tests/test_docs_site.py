"""The documentation cannot drift from the code: the site builds strictly, the README's links reach real pages and
headings, and every command line the README and docs/ show is accepted by that command's own argument parser."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT
from tests.documentation import DOCS, README, pages, section

# Every console script the package installs, as "module:function" (pyproject.toml): the parsers are found
# through these, so that the tests follow a command whose module moves.
ENTRY_POINTS: dict[str, str] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
TRAINER = "image_classifier_trainer"
# Scripts of the repository that pass their arguments on to a command, as the docs show them.
WRAPPERS = {"docker/run_training.sh": TRAINER}
README_MAX_LINES = 250
SHELL_FENCES = {"bash", "sh", "shell", "console"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ";;"}
REDIRECTIONS = {">", ">>", "<", ">&", "<&"}


# --- the site -----------------------------------------------------------------------------------------------


def build_site(site_dir: Path, config: Path = REPO_ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2 is no warning of ours
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(site_dir),
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=config.parent,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    result = build_site(site_dir)
    assert result.returncode == 0 and "WARNING" not in result.stderr + result.stdout, result.stderr + result.stdout
    return site_dir


def test_the_site_builds_strictly_without_a_warning(site):
    assert (site / "index.html").is_file()
    for page in sorted(DOCS.glob("*.md")):
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file(), f"{page.name} was not built"


def test_every_page_is_in_the_nav_and_the_nav_names_only_pages():
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True
    assert config["validation"]["links"]["anchors"] == "warn"
    in_nav = [next(iter(entry.values())) for entry in config["nav"]]
    assert sorted(in_nav) == sorted(page.name for page in DOCS.glob("*.md"))


def _copy_docs(tmp_path: Path) -> Path:
    """A copy of mkdocs.yml and docs/ to break on purpose."""
    (tmp_path / "docs").mkdir()
    for path in DOCS.rglob("*"):
        if path.is_file():
            target = tmp_path / "docs" / path.relative_to(DOCS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (tmp_path / "mkdocs.yml").write_text((REPO_ROOT / "mkdocs.yml").read_text())
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize(
    "breakage",
    [
        "[a page that does not exist](no_such_page.md)",
        "[a heading that does not exist](serving.md#no-such-heading)",
        "[a heading of this page that does not exist](#no-such-heading)",
    ],
)
def test_a_broken_link_fails_the_build(tmp_path, breakage):
    config = _copy_docs(tmp_path)
    page = tmp_path / "docs" / "training.md"
    page.write_text(page.read_text() + f"\nSee {breakage}.\n")
    result = build_site(tmp_path / "site", config)
    assert result.returncode != 0, result.stderr


def test_a_page_missing_from_the_nav_fails_the_build(tmp_path):
    config = _copy_docs(tmp_path)
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n")
    result = build_site(tmp_path / "site", config)
    assert result.returncode != 0, result.stderr


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _outside_code(text: str) -> str:
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_links_reach_files_and_headings(site):
    readme = README.read_text()
    headings = {_github_slug(h) for h in re.findall(r"^#+ (.*)$", _outside_code(readme), re.MULTILINE)}
    links = re.findall(r"\]\(([^)\s]+)\)", _outside_code(readme))
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in headings, f"README.md links to #{anchor}, which is no heading of it"
            continue
        assert (REPO_ROOT / path).exists(), f"README.md links to {path}, which does not exist"
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), link
            stem = Path(path).stem
            built = (site / "index.html" if stem == "index" else site / stem / "index.html").read_text()
            assert f'id="{anchor}"' in built, f"README.md links to {link}: {path} has no such heading"
            # The README is read on GitHub, which renders docs/*.md itself and slugs headings its own way
            # (`--resume` keeps its hyphens there, MkDocs folds them): the link must land in both.
            page_headings = re.findall(r"^#+ (.*)$", _outside_code((REPO_ROOT / path).read_text()), re.MULTILINE)
            assert anchor in {_github_slug(h) for h in page_headings}, f"README.md links to {link}: not on GitHub"


def test_the_readme_is_a_ten_minute_read():
    assert len(README.read_text().splitlines()) < README_MAX_LINES


def test_the_readme_maps_every_command_and_make_target():
    readme = README.read_text()
    for script in ENTRY_POINTS:
        assert f"`{script}`" in readme, script
    assert "make test" in readme  # CI runs the README's test command
    targets = re.findall(r"^## .*\n([a-zA-Z_-]+):", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert "docs" in targets
    assert not [target for target in targets if f"make {target}" not in readme and target != "help"]


def test_the_figures_are_the_example_runs():
    for name in ("metrics.png", "curves.png"):
        shown = DOCS / "figures" / name
        assert shown.read_bytes() == (REPO_ROOT / "experiments" / "local_exp_test" / "run_1" / name).read_bytes()


# --- the command lines ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """One documented invocation of a command of the package, as a shell would split it."""

    where: str  # "docs/serving.md:42"
    command: str  # a console script's name, or "python -m MODULE"
    module: str  # the module whose build_parser() parses it
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.command} {shlex.join(self.argv)}"


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every line of a bash/sh/console code block, continuation lines joined and
    console prompts removed."""
    found: list[tuple[int, str]] = []
    fence = None
    pending = ""
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().split(" ")[0].lower()
            continue
        if fence not in SHELL_FENCES:
            continue
        if fence == "console":
            if not pending and not stripped.startswith("$ "):
                continue  # the command's output
            stripped = stripped[2:] if not pending else stripped
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        found.append((start, pending + stripped))
        pending = ""
    return found


def _without_comment(line: str) -> str:
    """The line up to a shell comment: a # that starts a word outside quotes (a URL's # is part of its word)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _words(line: str) -> list[str]:
    line = re.sub(r"<([A-Za-z][\w-]*)>", r"\1", _without_comment(line))  # a placeholder such as <tag>: no redirection
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _simple_commands(words: list[str]) -> list[list[str]]:
    """The simple commands of a shell line: split at operators, without redirections and variable assignments."""
    commands: list[list[str]] = [[]]
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in SHELL_OPERATORS:
            commands.append([])
        elif word in REDIRECTIONS:
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()  # 2> file
            skip = True
        elif not commands[-1] and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
            continue  # NAME=value before a command
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def _module_of(entry_point: str) -> str:
    return entry_point.split(":")[0]


def _after_module_option(words: list[str]) -> tuple[str, list[str]] | None:
    """For `python -m MODULE args` or a launcher's `... -m MODULE args`: MODULE and args."""
    for index, word in enumerate(words):
        if word in ("-m", "--module") and index + 1 < len(words):
            return words[index + 1], words[index + 2 :]
        if word.startswith("--module="):
            return word.partition("=")[2], words[index + 1 :]
    return None


def invocations(words: list[str]) -> list[tuple[str, str, list[str]]]:
    """(command, module, arguments) of each command of the package that a simple command runs."""
    if not words:
        return []
    program = Path(words[0]).name
    if program in ENTRY_POINTS:
        return [(program, _module_of(ENTRY_POINTS[program]), words[1:])]
    if program in ("bash", "sh") and words[1:2] and words[1] in WRAPPERS:
        words = words[1:]
    if words[0] in WRAPPERS:
        script = WRAPPERS[words[0]]
        return [(script, _module_of(ENTRY_POINTS[script]), words[1:])]
    if program == "make" and "train" in words[1:]:
        # make train ... TRAIN_ARGS="...": the Makefile gives the trainer these after its own options
        extra = [word.partition("=")[2] for word in words[1:] if word.startswith("TRAIN_ARGS=")]
        fixed = ["--experiment_name", "e", "--run_name", "r", "--experiments_folder", "x", "--dataset_folder", "d"]
        return [(TRAINER, _module_of(ENTRY_POINTS[TRAINER]), fixed + shlex.split(" ".join(extra)))]
    if program == "docker" and "--entrypoint" in words:
        index = words.index("--entrypoint")
        entrypoint = Path(words[index + 1]).name
        if entrypoint not in ENTRY_POINTS:
            return []
        # docker run [options] --entrypoint NAME IMAGE ARGS: the docs give --entrypoint last of docker's options
        image = words[index + 2]
        assert not image.startswith("-"), f"put --entrypoint last of docker's options: {shlex.join(words)}"
        return [(entrypoint, _module_of(ENTRY_POINTS[entrypoint]), words[index + 3 :])]
    python = re.fullmatch(r"python[\d.]*", program)
    if python and len(words) > 1 and re.fullmatch(r"benchmarks/\w+\.py", words[1]):
        return [(f"python {words[1]}", words[1][: -len(".py")].replace("/", "."), words[2:])]
    launched = None
    if program == "torchrun":
        launched = _after_module_option(words[1:])
    elif python and words[1:3] == ["-m", "torch.distributed.run"]:
        launched = _after_module_option(words[3:])
    elif python and words[1:2] == ["-m"] and len(words) > 2:
        launched = (words[2], words[3:])
    if launched and launched[0].split(".")[0] == "image_classifier":
        module, arguments = launched
        return [(f"python -m {module}", module, arguments)]
    return []


def command_lines_of(text: str, where: str) -> list[CommandLine]:
    return [
        CommandLine(f"{where}:{number}", command, module, tuple(arguments))
        for number, line in shell_lines(text)
        for words in _simple_commands(_words(line))
        for command, module, arguments in invocations(words)
    ]


COMMAND_LINES = [
    line for page in pages() for line in command_lines_of(page.read_text(), str(page.relative_to(REPO_ROOT)))
]


def _parser(module: str) -> argparse.ArgumentParser:
    parser = importlib.import_module(module).build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def parse_error(command_line: CommandLine) -> str | None:
    """What the command's own parser says of the documented arguments: None when it accepts them (--help and
    --version, which exit 0, included)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            _parser(command_line.module).parse_args(list(command_line.argv))
    except SystemExit as exit_info:
        return None if exit_info.code == 0 else f"exit {exit_info.code}: {stderr.getvalue().strip()}"
    return None


def test_the_docs_show_every_command():
    shown = {line.command for line in COMMAND_LINES}
    assert set(ENTRY_POINTS) <= shown, set(ENTRY_POINTS) - shown
    assert {"python -m image_classifier.main", "python -m image_classifier.data.synthetic"} <= shown, shown
    benchmarks = {f"python benchmarks/{path.name}" for path in (REPO_ROOT / "benchmarks").glob("*.py")}
    assert {"python benchmarks/bench_training.py", "python benchmarks/serve_load.py"} <= shown & benchmarks, shown
    assert len(COMMAND_LINES) >= 50, len(COMMAND_LINES)


@pytest.mark.parametrize("command_line", COMMAND_LINES, ids=str)
def test_every_documented_command_line_parses(command_line):
    error = parse_error(command_line)
    assert error is None, f"{command_line}\n{error}"


@pytest.mark.parametrize(
    "module", sorted({line.module for line in COMMAND_LINES if line.command.startswith("python -m")})
)
def test_every_module_run_with_python_m_runs_as_a_program(module):
    spec = importlib.util.find_spec(module)
    assert spec and spec.origin, module
    if spec.submodule_search_locations:  # a package runs its __main__
        spec = importlib.util.find_spec(module + ".__main__")
        assert spec and spec.origin, f"{module} has no __main__"
    else:
        assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(), f"{module} does not run as a program"


# --- the checker itself: a wrong command line in the docs is found ------------------------------------------

WRONG_DOC = """
Prose is not read: `image_classifier_trainer --not_checked_in_prose`.

```bash
export DB_PASSWORD=...
image_classifier_runs list --sort test_accuracy {option}     # a comment
```

```console
$ torchrun --standalone --nproc_per_node=2 -m image_classifier.main --experiment_name e --run_name r \\
    {option}
output line --not_a_command
```
"""


def _options(parser: argparse.ArgumentParser) -> set[str]:
    options = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                options |= _options(subparser)
    return options


def test_the_checker_reads_what_the_shell_runs():
    runs_line, trainer_line = command_lines_of(WRONG_DOC.format(option="--descending"), "doc")
    assert (runs_line.command, runs_line.argv) == (
        "image_classifier_runs",
        ("list", "--sort", "test_accuracy", "--descending"),
    )
    assert (trainer_line.command, trainer_line.argv) == (
        "python -m image_classifier.main",
        ("--experiment_name", "e", "--run_name", "r", "--descending"),
    )
    assert parse_error(runs_line) is None
    assert "exit 2" in parse_error(trainer_line)  # --descending is no option of the trainer
    words = _words('DB_PASSWORD=x image_classifier_runs show e/r > out.txt 2> err.txt && kill %1 & echo "#" a#b # c')
    assert _simple_commands(words) == [["image_classifier_runs", "show", "e/r"], ["kill", "%1"], ["echo", "#", "a#b"]]
    serve = _module_of(ENTRY_POINTS["image_classifier_serve"])
    make = _words('make train DATASET=data/sample_dataset RUN=run_2 TRAIN_ARGS="--num_epochs 3 --seed 1"')
    assert invocations(make)[0][2][-4:] == ["--num_epochs", "3", "--seed", "1"]
    docker = _words("docker run --rm -p 8000:8000 --entrypoint image_classifier_serve image:tag --model /m --port 1")
    assert invocations(docker) == [("image_classifier_serve", serve, ["--model", "/m", "--port", "1"])]


@settings(max_examples=25, deadline=None)
@given(option=st.from_regex(r"--?[a-z][a-z_-]{0,24}", fullmatch=True))
def test_an_unknown_option_in_the_docs_fails(option):
    runs_line, trainer_line = command_lines_of(WRONG_DOC.format(option=option), "doc")
    known = _options(_parser(runs_line.module)) | _options(_parser(trainer_line.module))
    assume(option not in known)
    # "-vv" is -v twice and "-x5" is -x 5 to argparse: a single dash before a known short option is no typo
    assume(option.startswith("--") or option[:2] not in known)
    assert "exit 2" in parse_error(runs_line)
    assert "exit 2" in parse_error(trainer_line)


def test_a_bad_value_in_the_docs_fails():
    text = "```bash\nimage_classifier_trainer --experiment_name e --run_name r --batch_size 0\n```\n"
    (line,) = command_lines_of(text, "doc")
    assert "exit 2" in parse_error(line)


def tree_paths(tree: str) -> set[str]:
    """The paths a `tree`-style drawing names: each entry joined to the folders above it by its depth."""
    paths, folders = set(), []
    for line in tree.splitlines():
        match = re.match(r"^((?:│   |    )*)[├└]── (\S+)", line)
        if not match:
            continue
        depth = len(match.group(1)) // 4
        folders[depth:] = [match.group(2)]
        paths.add("/".join(folders))
    return paths


def test_the_tree_reader_joins_entries_to_their_folders():
    drawing = "├── a\n│   ├── b.py   # x\n│   └── c\n│       └── d.py\n└── e.py\n"
    assert tree_paths(drawing) == {"a", "a/b.py", "a/c", "a/c/d.py", "e.py"}


def test_the_repository_tree_names_every_module_of_the_package_and_nothing_that_is_gone():
    drawn = {path for path in tree_paths(section("operations.md", "Repository structure")) if path.endswith(".py")}
    package = {
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "image_classifier").rglob("*.py")
        if path.name not in ("__init__.py", "_version.py")
    }
    drawn_in_package = {path for path in drawn if path.startswith("image_classifier/")}
    assert package - drawn_in_package == set(), "modules the tree in docs/operations.md does not show"
    assert {path for path in drawn if not (REPO_ROOT / path).exists()} == set(), "the tree shows what is gone"
