"""Shared fixtures: small generated datasets in the real CIFAR-10 file format, and command runners."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from image_classifier.data.synthetic import generate_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
BIN_DIR = Path(sys.executable).parent
PASSWORD = "pw-Tr0ub4dor-do-not-leak"

# No per-example deadline for property tests: these machines are shared and noisy (an example that takes
# 200 ms on a quiet one takes seconds on a busy one); a real hang still ends at pytest's own limits.
settings.register_profile("shared-machines", deadline=None)
settings.load_profile("shared-machines")

# 300 training images in 5 batch files (as many as torchvision expects) and 97 test images:
# no batch size used in the tests divides 97.
TRAIN_SIZE, TEST_SIZE = 300, 97
# What a completed run's folder holds.
RUN_FILES = ["confusion_matrix.png", "curves.png", "metrics.json", "metrics.png", "model.pth", "run.json"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A small generated dataset; read-only by convention (copy it to modify)."""
    folder = tmp_path_factory.mktemp("dataset")
    generate_dataset(folder, TRAIN_SIZE, TEST_SIZE, seed=0, train_batches=5)
    return folder


def command(name: str) -> str:
    """The installed console script of this environment (what a user runs)."""
    return str(BIN_DIR / name)


def trainer_args(dataset: Path, experiments: Path, run_name: str = "r", *extra: str) -> list[str]:
    return [
        "--experiment_name",
        "e",
        "--run_name",
        run_name,
        "--dataset_folder",
        str(dataset),
        "--experiments_folder",
        str(experiments),
        "--num_epochs",
        "2",
        *extra,
    ]


def run_command(
    args: list[str],
    cwd: Path | None = None,
    password: str | None = PASSWORD,
    env: dict | None = None,
    timeout: float = 600,
):
    environment = {k: v for k, v in os.environ.items() if k != "DB_PASSWORD"}
    if password is not None:
        environment["DB_PASSWORD"] = password
    environment.update(env or {})
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def run_trainer(*args: str, cwd: Path | None = None, password: str | None = PASSWORD, env: dict | None = None):
    return run_command([command("image_classifier_trainer"), *args], cwd=cwd, password=password, env=env)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A command's main() called in-process installs its log handler on the root logger, writing to the
    stderr of that moment (pytest's capture of that test): later tests must not log into a closed capture."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
