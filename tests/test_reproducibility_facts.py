"""What run.json records about the code and the environment."""

import subprocess
import sys

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
