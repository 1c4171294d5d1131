"""Serving fixtures: one tiny real run trained per session, its test images as PNG files, and the service
started as a real process (the console script) on a free port and always stopped."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from image_classifier.data.batches import preprocess
from image_classifier.data.cifar import load_dataset
from image_classifier.model.model import Net
from tests.conftest import command, run_trainer, trainer_args

READY_TIMEOUT_S = 180  # a process importing torch takes 10-40 s to start on a busy 2-core machine


@dataclass(frozen=True)
class OfflineResults:
    """The test split through the trained weights, the way the trainer's evaluation computes it."""

    images: np.ndarray  # uint8 N x 3 x 32 x 32
    labels: np.ndarray
    probabilities: np.ndarray  # softmax of the logits, N x 10
    classes: tuple[str, ...]

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@pytest.fixture(scope="session")
def trained_run(dataset, tmp_path_factory) -> Path:
    """experiments/e/r of a one-epoch run on the generated dataset."""
    experiments = tmp_path_factory.mktemp("serving") / "experiments"
    result = run_trainer(*trainer_args(dataset, experiments, "r", "--num_epochs", "1"))
    assert result.returncode == 0, result.stderr
    return experiments / "e" / "r"


@pytest.fixture(scope="session")
def offline(trained_run, dataset) -> OfflineResults:
    data = load_dataset(dataset)
    net = Net(len(data.classes))
    net.load_state_dict(torch.load(trained_run / "model.pth", weights_only=True))
    net.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(net(preprocess(data.test.images)), dim=1).numpy()
    return OfflineResults(data.test.images.numpy(), data.test.labels.numpy(), probabilities, data.classes)


@pytest.fixture(scope="session")
def test_pngs(offline, tmp_path_factory) -> list[Path]:
    """The test split as 32 x 32 RGB PNG files, in order."""
    folder = tmp_path_factory.mktemp("test_pngs")
    paths = []
    for index, image in enumerate(offline.images):
        path = folder / f"{index:03d}.png"
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


def png_bytes(image_chw: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_chw.transpose(1, 2, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few KB that declares width x height RGB pixels but holds only 10 rows (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 10)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample called `name` in a Prometheus text exposition."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the one sample `name` with these labels; 0 when there is none (a counter not yet used)."""
    values = [value for found, value in metric_samples(text, name) if all(found.get(k) == v for k, v in labels.items())]
    assert len(values) <= 1, (name, labels, values)
    return values[0] if values else 0.0


def variant_run(source: Path, target: Path, classes: list[str] | None = None, change=None) -> Path:
    """A copy of a completed run whose weights `change(state_dict)` altered and whose run.json names
    `classes`; its model_sha256 is the new file's, so that the registry takes it as any other run."""
    shutil.copytree(source, target)
    state_dict = torch.load(target / "model.pth", weights_only=True)
    if change is not None:
        change(state_dict)
    torch.save(state_dict, target / "model.pth")
    record = json.loads((target / "run.json").read_text())
    record["model_sha256"] = hashlib.sha256((target / "model.pth").read_bytes()).hexdigest()
    if classes is not None:
        record["classes"] = classes
        if record.get("model_spec") is not None:  # the spec's classes are the ones readers use
            record["model_spec"]["classes"] = classes
    (target / "run.json").write_text(json.dumps(record, indent=2))
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the service exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"the service did not answer /health within {READY_TIMEOUT_S} s:\n{server.log()}")


def stop(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@contextlib.contextmanager
def running_server(
    log_dir: Path, *args: str, env: dict | None = None, cwd: Path | None = None, program: list[str] | None = None
):
    """`image_classifier_serve ARGS --port <free>` (or `program ARGS ...`) as a real process; stopped (SIGTERM)
    even when the test fails."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k not in ("SERVE_TOKEN", "MLFLOW_TRACKING_URI")}
    environment.update(env or {})
    log_path = log_dir / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*(program or [command("image_classifier_serve")]), *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def served_run(trained_run, tmp_path_factory):
    """The trained run, served with the default settings for a whole test module."""
    with running_server(tmp_path_factory.mktemp("logs"), "--model", str(trained_run)) as server:
        yield server


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def partial_request(server: Server, path: str, body: bytes, sent: int, content_type: str = "image/png"):
    """A socket whose request has its headers and the first `sent` bytes of its body sent: in flight."""
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=120)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body[:sent])
    return sock


def receive_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def split_response(reply: bytes) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of a raw HTTP/1.1 response."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def refuses_connections(server: Server) -> bool:
    try:
        httpx.get(server.url + "/health", timeout=10)
    except httpx.ConnectError:
        return True
    return False


class PredictionLoad:
    """Clients posting an image without pause until stopped; every answer's status and model version kept, and
    every error a client meets (a refused connection, a timeout) recorded, never silently ending it.

    `fresh_connections`: each request on a new connection, so that every worker of a `--workers` service gets
    some. `scrape_models`: a scraper reads /metrics meanwhile and keeps each scrape's model_info samples.
    """

    def __init__(
        self, url: str, payload: bytes, clients: int = 6, fresh_connections: bool = False, scrape_models: bool = False
    ) -> None:
        self.url, self.payload, self.fresh_connections = url, payload, fresh_connections
        self.stopping = threading.Event()
        self.answers: list[list[tuple[int, int | None]]] = [[] for _ in range(clients)]
        self.errors: list[str] = []
        self.scrapes: list[list] = []
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        if scrape_models:
            self.threads.append(threading.Thread(target=self._scraper))

    def _client(self, index: int) -> None:
        headers = {"Content-Type": "image/png"}
        try:
            with httpx.Client(timeout=120) as client:
                while not self.stopping.is_set():
                    if self.fresh_connections:
                        response = httpx.post(self.url + "/predict", content=self.payload, headers=headers, timeout=120)
                    else:
                        response = client.post(self.url + "/predict", content=self.payload, headers=headers)
                    version = response.json()["model"]["version"] if response.status_code == 200 else None
                    self.answers[index].append((response.status_code, version))
        except Exception as exc:  # recorded for the test to assert on
            self.errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    def _scraper(self) -> None:
        try:
            with httpx.Client(timeout=120) as client:
                while not self.stopping.is_set():
                    text = client.get(self.url + "/metrics").text
                    self.scrapes.append(metric_samples(text, "image_classifier_model_info"))
        except Exception as exc:
            self.errors.append(f"scraper: {type(exc).__name__}: {exc}")

    def count(self) -> int:
        return sum(len(answers) for answers in self.answers)

    def latest_versions(self) -> set:
        return {answers[-1][1] for answers in self.answers if answers}

    def __enter__(self) -> PredictionLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
