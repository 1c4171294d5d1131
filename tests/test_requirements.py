"""The lock files and their installers: sourced or executed, from anywhere, stopping at the first error."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements"
SETS = ("build", "cq", "dev", "prod")


def pins(lock_file: Path) -> dict[str, str]:
    return {
        name.lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", lock_file.read_text(), flags=re.M)
    }


@pytest.mark.parametrize("name", SETS)
def test_lock_file_pins_every_direct_requirement_with_hashes_and_no_machine_paths(name):
    lock = REQUIREMENTS / f"requirements-{name}.txt"
    text = lock.read_text()
    pinned = pins(lock)
    for line in (REQUIREMENTS / f"requirements-{name}.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            assert re.split(r"[<>=!~ ]", line)[0].lower() in pinned, f"{line} is not in {lock.name}"
    hashed = re.findall(r"^\S+==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", text, flags=re.M)
    assert len(hashed) == len(pinned) > 0
    header = text.split("\n\n")[0] if "\n\n" in text else text[:600]
    for option in ("--generate-hashes", "--allow-unsafe", "--strip-extras", f"--output-file=requirements-{name}.txt"):
        assert option in header
    assert not re.search(r"file://|--find-links|--index-url|/opt/|/work/|/home/|/tmp/", text)


def test_torch_is_pinned_to_the_releases_we_build_with():
    prod = pins(REQUIREMENTS / "requirements-prod.txt")
    assert (prod["torch"], prod["torchvision"]) == ("2.14.1", "0.29.1")


def test_dev_agrees_with_the_locks_it_installs_beside():
    dev = pins(REQUIREMENTS / "requirements-dev.txt")
    for other in ("cq", "build", "prod"):
        for name, version in pins(REQUIREMENTS / f"requirements-{other}.txt").items():
            if name in dev:
                assert dev[name] == version, f"{name}: {other} pins {version}, dev pins {dev[name]}"


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """A stand-in for python that logs its arguments and fails on demand (no real install happens)."""
    script = tmp_path / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$*" >> "$FAKE_LOG"\n'
        'if [ "$1" = -c ]; then echo "$FAKE_PREFIX"; exit 0; fi\n'
        'if [ -n "${FAKE_FAIL:-}" ]; then exit 3; fi\n'
    )
    script.chmod(0o755)
    return script


def run_installer(shell_command: str, fake_python: Path, tmp_path: Path, fail: bool = False):
    env = {
        **os.environ,
        "PYTHON": str(fake_python),
        "FAKE_LOG": str(tmp_path / "log"),
        "FAKE_PREFIX": str(tmp_path),
        "FAKE_FAIL": "1" if fail else "",
    }
    return subprocess.run(["bash", "-c", shell_command], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_executed_from_another_directory_installs_hash_checked_and_records_the_lock(fake_python, tmp_path):
    result = run_installer(f"bash {REQUIREMENTS}/requirements-prod.sh", fake_python, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"-m pip install --require-hashes -r {REQUIREMENTS}/requirements-prod.txt" in (tmp_path / "log").read_text()
    record = (tmp_path / "image-classifier-lock.sha256").read_text()
    assert record.split()[1] == "requirements-prod.txt" and len(record.split()[0]) == 64


def test_dev_installs_three_locks_then_the_package_editable(fake_python, tmp_path):
    result = run_installer(f"bash {REQUIREMENTS}/requirements-dev.sh", fake_python, tmp_path)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "log").read_text()
    assert "requirements-cq.txt -r" in log and "requirements-build.txt -r" in log and "requirements-dev.txt" in log
    assert f"-m pip install --no-deps --no-build-isolation -e {REQUIREMENTS}/.." in log


def test_sourced_installer_stops_at_the_first_error_without_closing_the_shell(fake_python, tmp_path):
    result = run_installer(
        f'source {REQUIREMENTS}/requirements-dev.sh; echo "still here: $?"', fake_python, tmp_path, fail=True
    )
    assert "still here: 3" in result.stdout
    assert "-e" not in (tmp_path / "log").read_text()  # nothing ran after the failed install
