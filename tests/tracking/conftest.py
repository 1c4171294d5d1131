"""Runs made by the real trainer, shared by the tracking tests (training is the slow part)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_trainer, trainer_args

SEEDS = {"seed0": 0, "seed1": 1}


@pytest.fixture(scope="session")
def trained_experiments(dataset, tmp_path_factory) -> Path:
    """An experiments folder with two completed runs, e/seed0 and e/seed1 (2 epochs, different seeds).

    Read-only by convention: tests that change anything use `experiments`, a copy.
    """
    folder = tmp_path_factory.mktemp("trained") / "experiments"
    for run, seed in SEEDS.items():
        result = run_trainer(*trainer_args(dataset, folder, run, "--seed", str(seed), "--batch_size", "10"))
        assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def experiments(trained_experiments, tmp_path) -> Path:
    """A private copy of the trained runs' experiments folder."""
    copy = tmp_path / "experiments"
    shutil.copytree(trained_experiments, copy)
    return copy
