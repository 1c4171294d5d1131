"""`image_classifier_serve --workers 2`: two real worker processes on one port, under a supervisor that passes
SIGHUP and SIGTERM on, and stops the service (exit status 1) when a worker dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import command
from tests.serving.conftest import (
    PredictionLoad,
    metric_samples,
    metric_value,
    partial_request,
    png_bytes,
    receive_all,
    refuses_connections,
    running_server,
    stop,
    variant_run,
    wait_for,
)
from tests.serving.test_registry_models import runs_command, sha_of

pytestmark = pytest.mark.slow

TOKEN = "tok-workers-7c1e-never-in-argv"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def scrape_each_worker(server, want: int = 2, headers: dict | None = None, attempts: int = 400) -> dict:
    """{worker number: (pid, /metrics text)}: a fresh connection per scrape (each worker answers the connections
    it accepts) until `want` workers have answered."""
    seen: dict[int, tuple[int, str]] = {}
    for _ in range(attempts):
        text = httpx.get(server.url + "/metrics", headers=headers, timeout=60).text
        ((labels, _),) = metric_samples(text, "image_classifier_worker_info")
        seen[int(labels["worker"])] = (int(labels["pid"]), text)
        if len(seen) == want:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered {attempts} scrapes")


def post(url: str, payload: bytes, headers: dict | None = None) -> httpx.Response:
    """One prediction on a connection of its own, so that any worker may take it."""
    return httpx.post(
        url + "/predict", content=payload, headers={"Content-Type": "image/png", **(headers or {})}, timeout=120
    )


def test_two_workers_share_the_port_each_answers_and_the_token_stays_off_every_command_line(
    trained_run, offline, tmp_path
):
    payload = png_bytes(offline.images[0])
    args = ("--model", str(trained_run), "--workers", "2")
    with running_server(tmp_path, *args, env={"SERVE_TOKEN": TOKEN}) as server:
        supervisor = server.process.pid
        workers = children(supervisor)
        assert len(workers) == 2, workers
        for pid in (supervisor, *workers):
            assert TOKEN.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
        assert post(server.url, payload).status_code == 401

        sent = 0

        def predictions_by_worker() -> dict[int, float]:
            answered = scrape_each_worker(server, headers=AUTH)
            assert {pid for pid, _ in answered.values()} == set(workers)
            return {
                number: metric_value(text, "image_classifier_requests_total", route="/predict", status="200")
                for number, (_, text) in answered.items()
            }

        with ThreadPoolExecutor(8) as pool:
            # Rounds of 8 concurrent clients until both workers have answered predictions (normally the first).
            for _ in range(20):
                answers = list(pool.map(lambda _: post(server.url, payload, AUTH), range(16)))
                assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers]
                labels = {a.json()["predictions"][0]["label"] for a in answers}
                assert labels == {int(offline.predicted[0])}
                sent += 16
                counts = predictions_by_worker()
                if all(counts.values()):
                    break
        assert all(counts.values()), counts
        assert sum(counts.values()) == sent  # each prediction counted once, by the worker that answered it
        assert httpx.get(server.url + "/ready", headers=AUTH, timeout=60).status_code == 200
        assert stop(server) == 0, server.log()
    assert not any(alive(pid) for pid in workers)
    log = server.log()
    assert TOKEN not in log
    assert "worker 1 " in log and "worker 2 " in log and "supervisor" in log


@pytest.fixture(scope="module")
def two_versions(trained_run, tmp_path_factory) -> Path:
    """An experiments folder: the session's run as version 1 of `cifar` (alias `production`), and a copy with
    other weights as version 2 (no training: a nudged bias, hence another sha256)."""
    experiments = tmp_path_factory.mktemp("workers_registry") / "experiments"
    variant_run(trained_run, experiments / "e" / "r1")
    variant_run(trained_run, experiments / "e" / "r2", change=lambda state: state["fc3.bias"].add_(1e-3))
    for run, extra in (("e/r1", ["--alias", "production"]), ("e/r2", [])):
        registered = runs_command("register", run, "--name", "cifar", *extra, experiments=experiments)
        assert registered.returncode == 0, registered.stderr
    return experiments


def versions_of_each_worker(server) -> dict[int, tuple[str, dict]]:
    """{worker: (served version, model_reloads_total by result)}."""
    result = {}
    for number, (_, text) in scrape_each_worker(server).items():
        ((labels, _),) = metric_samples(text, "image_classifier_model_info")
        reloads = {s["result"]: v for s, v in metric_samples(text, "image_classifier_model_reloads_total")}
        result[number] = (labels["version"], reloads)
    return result


def both_on(server, version: str) -> bool:
    return {served for served, _ in versions_of_each_worker(server).values()} == {version}


def test_sighup_swaps_every_worker_under_load_without_a_failed_request(two_versions, offline, tmp_path):
    registry = two_versions
    assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry), "--workers", "2"]
    with running_server(tmp_path, *model, env={"MLFLOW_TRACKING_URI": ""}) as server:
        assert both_on(server, "1")
        with PredictionLoad(server.url, png_bytes(offline.images[0]), fresh_connections=True) as load:
            wait_for(lambda: load.count() > 30, "answers from version 1")
            assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: both_on(server, "2"), "both workers to serve version 2")
            counts = [len(answers) for answers in load.answers]
            wait_for(lambda: load.count() > sum(counts) + 30, "more answers after the swap")
        assert load.errors == []
        statuses = {status for answers in load.answers for status, _ in answers}
        assert statuses == {200}, statuses
        # While the two workers swap (each on its own, a moment apart) a client may meet either version;
        # once both serve version 2, every answer is version 2's.
        assert {version for answers in load.answers for _, version in answers} == {1, 2}
        after = [version for answers, before in zip(load.answers, counts) for _, version in answers[before:]]
        assert after and set(after) == {2}
        each = versions_of_each_worker(server)
        assert each == {1: ("2", {"swapped": 1.0}), 2: ("2", {"swapped": 1.0})}, each
        # /metadata and /ready agree, whichever worker answers.
        sha = sha_of(registry / "e" / "r2")
        for _ in range(10):
            metadata = httpx.get(server.url + "/metadata", timeout=60).json()["model"]
            assert (metadata["registry_version"], metadata["sha256"]) == (2, sha)
            assert httpx.get(server.url + "/ready", timeout=60).json()["sha256"] == sha
        assert server.log().count("SIGHUP: passed to the 2 workers") == 1


def test_reload_every_swaps_every_worker(two_versions, offline, tmp_path):
    registry = two_versions
    assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry), "--workers", "2"]
    with running_server(tmp_path, *model, "--reload_every", "1", env={"MLFLOW_TRACKING_URI": ""}) as server:
        assert both_on(server, "1")
        assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
        wait_for(lambda: both_on(server, "2"), "both workers to follow the alias to version 2")
        for served, reloads in versions_of_each_worker(server).values():
            assert reloads["swapped"] == 1 and set(reloads) <= {"swapped", "unchanged"}
    assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0


def requests_in_flight_on_both_workers(server, body: bytes, at_most: int = 12) -> tuple[list[socket.socket], dict]:
    """Requests with half their body sent, opened until each worker holds at least one: (sockets, {worker:
    (pid, requests in progress)})."""
    sockets: list[socket.socket] = []
    while True:
        sockets.append(partial_request(server, "/predict", body, sent=100))
        wait_for(
            lambda: total_in_progress(server) == len(sockets), f"{len(sockets)} requests to be in progress", timeout=120
        )
        held = in_progress_by_worker(server)
        if all(count >= 1 for _, count in held.values()):
            return sockets, held
        assert len(sockets) < at_most, f"{at_most} requests all went to one worker: {held}"


def in_progress_by_worker(server) -> dict[int, tuple[int, int]]:
    return {
        number: (pid, int(metric_value(text, "image_classifier_requests_in_progress")))
        for number, (pid, text) in scrape_each_worker(server).items()
    }


def total_in_progress(server) -> int:
    return sum(count for _, count in in_progress_by_worker(server).values())


def test_sigterm_stops_both_workers_after_answering_their_requests_in_flight(trained_run, offline, tmp_path):
    body = png_bytes(offline.images[0])
    with running_server(tmp_path, "--model", str(trained_run), "--workers", "2") as server:
        workers = children(server.process.pid)
        sockets, held = requests_in_flight_on_both_workers(server, body)
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(server), "the listening socket to close")
        for sock in sockets:
            sock.sendall(body[100:])
        replies = [receive_all(sock) for sock in sockets]
        assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies), [r[:100] for r in replies]
        labels = {json.loads(reply.split(b"\r\n\r\n", 1)[1])["predictions"][0]["label"] for reply in replies}
        assert labels == {int(offline.predicted[0])}
        assert server.process.wait(timeout=120) == 0, server.log()
    assert not any(alive(pid) for pid in workers)
    assert server.log().count("stopped by SIGTERM") == 2


def test_a_killed_worker_stops_the_service_with_status_1_and_the_other_answers_its_requests(
    trained_run, offline, tmp_path
):
    """Documented choice: a worker that ends on its own is not restarted in place; the service stops (its other
    worker gracefully) and exits 1, for the supervisor above it to restart it whole."""
    body = png_bytes(offline.images[0])
    with running_server(tmp_path, "--model", str(trained_run), "--workers", "2") as server:
        sockets, held = requests_in_flight_on_both_workers(server, body)
        (victim_pid, _), (survivor_pid, survivor_count) = held[1], held[2]
        os.kill(victim_pid, signal.SIGKILL)
        wait_for(lambda: "was killed by SIGKILL: stopping the service" in server.log(), "the supervisor to notice")
        assert f"worker 1 (pid {victim_pid}) was killed by SIGKILL" in server.log()
        # From now on no worker says it is ready: the survivor is stopping, then nothing listens.
        wait_for(lambda: refuses_connections(server), "the listening socket to close")
        for sock in sockets:
            with_suppressed_reset(lambda: sock.sendall(body[100:]))
        replies = [receive_all(sock) for sock in sockets]
        answered = [reply for reply in replies if reply]
        assert len(answered) == survivor_count, [r[:100] for r in replies]
        assert all(reply.startswith(b"HTTP/1.1 200") for reply in answered), [r[:100] for r in answered]
        assert server.process.wait(timeout=120) == 1, server.log()
    assert not alive(survivor_pid)
    assert "worker 2 image_classifier.serving.serve: stopped by SIGTERM" in server.log()


def with_suppressed_reset(action) -> None:
    try:
        action()
    except (ConnectionResetError, BrokenPipeError):  # the killed worker's connections
        pass


def test_ctrl_c_stops_both_workers_once_and_exits_0(trained_run, tmp_path):
    """SIGINT to the supervisor (a terminal's Ctrl-C reaches only it: the workers have process groups of their
    own) is passed on once: a graceful stop, not uvicorn's forced one of a second Ctrl-C."""
    with running_server(tmp_path, "--model", str(trained_run), "--workers", "2") as server:
        scrape_each_worker(server)  # both serving: a stop while a worker still loads ends it without a log line
        workers = children(server.process.pid)
        assert all(os.getpgid(pid) != os.getpgid(server.process.pid) for pid in workers)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=120) == 0, server.log()
    assert not any(alive(pid) for pid in workers)
    assert server.log().count("stopped by SIGINT") == 2


def test_the_workers_stop_when_the_supervisor_is_killed(trained_run, tmp_path):
    with running_server(tmp_path, "--model", str(trained_run), "--workers", "2") as server:
        scrape_each_worker(server)  # both serving: a stop while a worker still loads ends it without a log line
        workers = children(server.process.pid)
        server.process.kill()
        server.process.wait(timeout=60)
        wait_for(lambda: not any(alive(pid) for pid in workers), "both workers to end")
        wait_for(lambda: refuses_connections(server), "the port to close")
    assert server.log().count("stopped by SIGTERM") == 2


def test_a_bad_model_with_two_workers_is_an_error_line_and_exit_status_1(tmp_path):
    result = subprocess.run(
        [command("image_classifier_serve"), "--model", str(tmp_path / "missing"), "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert f"error: no model at {tmp_path / 'missing'}" in result.stderr
    assert "exited with status 1: stopping the service" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_whose_inference_thread_dies_stops_the_service_with_status_1(trained_run, offline, tmp_path):
    """The fault of test_serve's single-worker test, in a service of two: the worker that meets it exits 1 on
    its own, and the supervisor stops the other and exits 1."""
    from tests.serving.test_serve import KILL_THE_WORKER

    program = [sys.executable, "-c", KILL_THE_WORKER]
    with running_server(tmp_path, "--model", str(trained_run), "--workers", "2", program=program) as server:
        workers = children(server.process.pid)
        answer = post(server.url, png_bytes(offline.images[0]))
        assert answer.status_code == 503 and "the inference worker stopped" in answer.json()["error"]
        assert server.process.wait(timeout=120) == 1, server.log()
    log = server.log()
    assert "exiting with status 1: the inference worker died (WorkerKilled: injected by the test)" in log
    assert "exited with status 1: stopping the service (exit status 1)" in log
    assert not any(alive(pid) for pid in workers)
