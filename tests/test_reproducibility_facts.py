"""What run.json records about the code and the environment."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import image_classifier
from image_classifier import reproducibility


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_git_state_names_the_checkout_the_code_runs_from(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "experiments").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "experiments" / "metrics.json").write_text("{}")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    monkeypatch.setattr(image_classifier, "__file__", str(repo / "pkg" / "__init__.py"))

    assert reproducibility._git_state() == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "experiments" / "metrics.json").write_text('{"a": 1}')  # runs are not code
    assert reproducibility._git_state()["dirty"] is False
    (repo / "pkg" / "__init__.py").write_text("x = 1")
    assert reproducibility._git_state()["dirty"] is True


def test_an_untracked_copy_inside_a_checkout_has_no_git_state(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("a checkout with a commit")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    installed = repo / ".venv" / "site-packages" / "pkg"  # a wheel installed into a venv in the checkout
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    monkeypatch.setattr(image_classifier, "__file__", str(installed / "__init__.py"))
    assert reproducibility._git_state() is None


def test_lock_record_written_by_the_installers_is_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(reproducibility.sys, "prefix", str(tmp_path))
    assert reproducibility._lock_file_record() is None
    (tmp_path / reproducibility.LOCK_RECORD_FILE).write_text("ab12  requirements-cq.txt\ncd34  requirements-dev.txt\n")
    assert reproducibility._lock_file_record() == {"requirements-cq.txt": "ab12", "requirements-dev.txt": "cd34"}


@pytest.mark.parametrize(
    "report, version",
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
            "535.104.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.86.15  Release Build  (dvs-builder)\n",
            "570.86.15",
        ),
        ("something else entirely\n", None),
    ],
)
def test_the_nvidia_driver_version_is_read_from_the_kernel_modules_report(tmp_path, report, version):
    (tmp_path / "version").write_text(report)
    assert reproducibility.nvidia_driver_version(tmp_path / "version") == version
    assert reproducibility.nvidia_driver_version(tmp_path / "absent") is None


def test_a_cpu_run_records_no_gpu():
    assert reproducibility.gpu_facts(torch.device("cpu")) is None


def test_code_sha256_changes_with_every_source_file_and_nothing_else(tmp_path, monkeypatch):
    installed = reproducibility.code_sha256()
    package = tmp_path / "site-packages" / "image_classifier"
    shutil.copytree(Path(image_classifier.__file__).parent, package)
    monkeypatch.setattr(image_classifier, "__file__", str(package / "__init__.py"))
    assert reproducibility.code_sha256() == installed  # the same code anywhere: the same hash

    def changed(edit, undo) -> bool:
        edit()
        after = reproducibility.code_sha256()
        undo()
        assert reproducibility.code_sha256() == installed
        return after != installed

    model, settings = package / "model" / "model.py", package / "data" / "db_connect.yaml"
    for path in (model, settings):
        text = path.read_text()
        assert changed(lambda: path.write_text(text + "\n"), lambda: path.write_text(text)), path  # one byte
    new_module = package / "model" / "extra.py"
    assert changed(lambda: new_module.write_text(""), new_module.unlink)
    assert changed(
        lambda: model.rename(model.with_name("renamed.py")), lambda: model.with_name("renamed.py").rename(model)
    )

    # Not code: the build's version stamp, bytecode, other files.
    version = package / "_version.py"
    version_text = version.read_text() if version.exists() else None
    for path, content in (
        (version, "__version__ = '9'\n"),
        (package / "__pycache__" / "x.pyc", "b"),
        (package / "NOTES.md", "n"),
    ):
        path.parent.mkdir(exist_ok=True)
        path.write_text(content)
        assert reproducibility.code_sha256() == installed, path
    if version_text is not None:
        version.write_text(version_text)


def test_torchvision_version_is_torchvisions_own_without_importing_it():
    """run.json records what torchvision.__version__ says (with its local label), read from version.py."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from image_classifier.reproducibility import torchvision_version\n"
            "version = torchvision_version()\n"
            "print('torchvision' in sys.modules)\n"
            "import torchvision\n"
            "print(version == torchvision.__version__, version)\n",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stdout.split()[:2] == ["False", "True"], result.stdout + result.stderr


def test_deterministic_algorithms_are_set_without_loading_inductor():
    code = (
        "import sys, torch\n"
        "from image_classifier.reproducibility import set_deterministic_algorithms\n"
        "set_deterministic_algorithms(True)\n"
        "on = torch.are_deterministic_algorithms_enabled()\n"
        "set_deterministic_algorithms(False)\n"
        "print(on, torch.are_deterministic_algorithms_enabled(), 'torch._inductor' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.stdout.split() == ["True", "False", "False"], result.stdout + result.stderr
