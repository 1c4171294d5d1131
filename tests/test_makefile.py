"""The Makefile as a new user meets it: the platform check before the venv, and `make docker-build` in a fresh
clone with nothing but the project's venv (no system Python with `build`; the `docker` command stood in for)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.documentation import section

PLATFORM_ERROR = "error: the lock files install on CPython 3.11 on Linux x86_64 with glibc 2.28 or newer only"


def stand_in_python(folder: Path, answer: str) -> Path:
    """An interpreter that describes itself as `answer` (implementation, version, system, machine, libc, its
    version) to the platform check, and does nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "python"
    script.write_text(f'#!/usr/bin/env bash\necho "{answer}"\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    "answer, described",
    [
        ("cpython 3.12 Linux x86_64 glibc 2.36", "cpython 3.12 on Linux x86_64 (glibc 2.36)"),
        ("cpython 3.11 Darwin arm64 no-libc 0", "cpython 3.11 on Darwin arm64 (no-libc 0)"),
        ("cpython 3.11 Linux aarch64 glibc 2.36", "cpython 3.11 on Linux aarch64 (glibc 2.36)"),
        ("cpython 3.11 Linux x86_64 glibc 2.17", "cpython 3.11 on Linux x86_64 (glibc 2.17)"),
        ("cpython 3.11 Linux x86_64 no-libc 0", "cpython 3.11 on Linux x86_64 (no-libc 0)"),  # musl (Alpine)
        ("pypy 3.11 Linux x86_64 glibc 2.36", "pypy 3.11 on Linux x86_64 (glibc 2.36)"),
    ],
)
def test_make_demo_stops_at_once_where_the_lock_files_cannot_install(answer, described, tmp_path):
    python = stand_in_python(tmp_path / "bin", answer)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "demo", f"PYTHON={python}", f"VENV={venv}", f"SAMPLE_DATASET={tmp_path}/d"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(PLATFORM_ERROR) and described in line, line
    assert "Docker image" in line and "pip install -e ." in line
    assert not venv.exists()  # stopped before creating anything


def test_a_python_that_cannot_run_is_reported_too(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "requirements" / "check_platform.sh"), str(tmp_path / "no-such-python")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "does not run as Python 3" in result.stderr


def test_the_platform_check_passes_this_machine_python():
    # The test suite itself runs on the locks' platform (CI and the build machines).
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "requirements" / "check_platform.sh"), sys.executable], capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (0, "")


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """A clone of this repository's last commit with a venv such as `make demo` leaves: the packages come from
    this environment through a path entry (no 5 GB reinstall), and make sees the venv as installed."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    venv = clone / ".venv"
    # --without-pip: the venv's own old setuptools would shadow the build lock's (>= 77) from the path entry.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next(venv.glob("lib/python*/site-packages"))
    # Every site-packages folder this interpreter sees (path entries are not searched for further .pth files).
    folders = [path for path in sys.path if path.endswith("site-packages")]
    (site_packages / "dependencies.pth").write_text("\n".join(folders) + "\n")
    (venv / ".prod-installed").touch()
    return clone


def stand_in_commands(folder: Path, record: Path) -> dict[str, str]:
    """PATH entries: `docker` records its arguments and keeps the build context's files instead of building;
    `python3` and `python` are a system Python without the `build` module."""
    folder.mkdir()
    (folder / "docker").write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > "{record}/arguments"\n'
        f'mkdir -p "{record}/context" && cp -r "${{@: -1}}"/. "{record}/context/"\n'
    )
    for name in ("python3", "python"):
        (folder / name).write_text("#!/usr/bin/env bash\necho \"$0: No module named 'build'\" >&2\nexit 1\n")
    for script in folder.iterdir():
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:/usr/local/bin:/usr/bin:/bin"}


def git_tags_at_head(clone: Path) -> list[str]:
    tags = subprocess.run(["git", "-C", str(clone), "tag", "--points-at", "HEAD"], capture_output=True, text=True)
    return tags.stdout.split()


@pytest.mark.slow
def test_make_docker_build_in_a_fresh_clone_needs_only_the_venv(fresh_clone, tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    env = stand_in_commands(tmp_path / "stand_ins", record)
    env.pop("PYTHON", None)
    result = subprocess.run(["make", "-C", str(fresh_clone), "docker-build"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    commit = subprocess.run(["git", "-C", str(fresh_clone), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = commit.stdout.strip()
    version = subprocess.run(
        [str(fresh_clone / ".venv" / "bin" / "python"), "-m", "setuptools_scm", "--root", str(fresh_clone)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Past a tag (or before the first), setuptools-scm names the commit in the version: 0.1.dev28+g3f71d8a28
    named = re.search(r"\+g([0-9a-f]{7,})$", version)
    assert git_tags_at_head(fresh_clone) or commit.startswith(named.group(1)), (version, commit)
    arguments = (record / "arguments").read_text().splitlines()
    assert arguments[0] == "build"
    # A Docker tag cannot hold "+".
    assert arguments[arguments.index("--tag") + 1] == f"image-classifier:{version.replace('+', '-')}-py3.11"
    build_args = [arguments[i + 1] for i, argument in enumerate(arguments) if argument == "--build-arg"]
    assert f"PACKAGE_VERSION={version}" in build_args and f"SOURCE_COMMIT={commit}" in build_args

    (wheel,) = (record / "context").glob("image_classifier-*.whl")
    assert wheel.name == f"image_classifier-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        version_file = archive.read("image_classifier/_version.py").decode()
    recorded: dict = {}
    exec(version_file, recorded)  # the file setuptools-scm wrote into the wheel
    assert (recorded["version"], recorded["commit_id"], recorded["dirty"]) == (version, commit, False)
    assert not list((fresh_clone / "docker").glob("*.whl"))  # the build context was cleaned up


def test_the_docs_quote_the_platform_error_as_the_check_prints_it():
    assert PLATFORM_ERROR in section("operations.md", "Troubleshooting")
    assert "Linux x86-64 (glibc 2.28 or newer) with CPython 3.11" in section(
        "operations.md", "Requirements and lock files"
    )


def test_make_help_shows_the_variables_values_not_their_names(tmp_path):
    result = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "--no-print-directory", "help", f"VENV={tmp_path}/venv"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "$(" not in result.stdout, result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "into data/sample_dataset if it is missing" in lines["data"]
    assert "documentation site" in lines["docs"]
    assert "Train on data/cifar_dataset (default" in lines["train"]
    assert f"keeps {tmp_path}/venv and the experiments" in lines["clean"]


def test_make_help_shows_a_value_with_quotes_as_it_is_and_never_runs_it(tmp_path):
    """A folder named "Bob's images" broke `make help`, and a value such as it's `cmd` ran cmd (the values were
    pasted into the shell command between single quotes)."""
    value = f"{tmp_path}/Bob's `touch {tmp_path}/ran` images"
    result = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "--no-print-directory", "help", f"SAMPLE_IMAGES={value}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "ran").exists()
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert f"into {value} if it is missing" in lines["images"]
