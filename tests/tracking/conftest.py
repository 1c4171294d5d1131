"""Runs made by the real trainer, shared by the tracking tests (training is the slow part)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import command, run_trainer, trainer_args

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    folder: Path  # its SQLite store and artifacts: everything it keeps


def _stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, with the children it started (the server's workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """One real `mlflow server` on 127.0.0.1 for the whole session: SQLite store, local artifacts."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = (folder / "server.log").open("w")
    arguments = [
        *("--backend-store-uri", f"sqlite:///{folder}/mlflow.db"),
        *("--artifacts-destination", str(folder / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    process = subprocess.Popen(
        [command("mlflow"), "server", *arguments], stdout=log, stderr=log, start_new_session=True
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 900  # the first start creates the database: minutes on a busy machine
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=10) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health"
            time.sleep(1)
        yield MlflowServer(uri=uri, folder=folder)
    finally:
        _stop(process)
        log.close()


@contextlib.contextmanager
def started(arguments: list[str], port: int) -> Iterator[subprocess.Popen]:
    """A helper process (tests/tracking/mlflow_proxy.py) listening on `port`, stopped afterwards."""
    process = subprocess.Popen([sys.executable, *arguments], start_new_session=True)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        _stop(process)
