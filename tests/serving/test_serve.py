"""The service as a user runs it: the console script on a free port, real HTTP clients, real signals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, command
from tests.documentation import page_text
from tests.serving.conftest import (
    Server,
    free_port,
    metric_samples,
    metric_value,
    partial_request,
    png_bytes,
    png_declaring,
    receive_all,
    refuses_connections,
    running_server,
    stop,
    wait_for,
)

pytestmark = pytest.mark.slow

TOKEN = "tok-9f3a-do-not-log-me"


def post_png(url: str, payload: bytes, client: httpx.Client | None = None, token: str | None = None, **kwargs):
    poster = client or httpx
    headers = {"Content-Type": "image/png"} | ({"Authorization": f"Bearer {token}"} if token else {})
    return poster.post(url + "/predict", content=payload, headers=headers, timeout=120, **kwargs)


def test_predictions_equal_the_offline_evaluation(served_run, offline, test_pngs, trained_run):
    """Every test image, one request each: the top class is the offline argmax, with the same probability,
    and the accuracy over the split is the run's recorded test accuracy."""
    with httpx.Client(timeout=120) as client:
        answers = [post_png(served_run.url, path.read_bytes(), client) for path in test_pngs]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    top = [a.json()["predictions"][0] for a in answers]
    assert [t["label"] for t in top] == offline.predicted.tolist()
    assert [t["class"] for t in top] == [offline.classes[i] for i in offline.predicted]
    expected = offline.probabilities[np.arange(len(top)), offline.predicted]
    np.testing.assert_allclose([t["probability"] for t in top], expected, rtol=0, atol=1e-5)
    accuracy = 100.0 * float(np.mean(np.array([t["label"] for t in top]) == offline.labels))
    recorded = json.loads((trained_run / "metrics.json").read_text())["test_accuracy"]
    assert accuracy == pytest.approx(recorded)
    model = answers[0].json()["model"]
    assert model["sha256"] == json.loads((trained_run / "run.json").read_text())["model_sha256"]


def test_a_batch_request_answers_each_image_in_order(served_run, offline, test_pngs):
    chosen = test_pngs[:40]
    files = [("files", (path.name, path.read_bytes(), "image/png")) for path in chosen]
    answer = httpx.post(served_run.url + "/predict/batch?top_k=2", files=files, timeout=120)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in chosen]
    assert [r["predictions"][0]["label"] for r in results] == offline.predicted[:40].tolist()
    assert all(len(r["predictions"]) == 2 for r in results)


def test_many_parallel_clients_each_get_their_own_answer(served_run, offline, test_pngs):
    """32 clients at once, each sending different images: every answer belongs to its own image (its
    probabilities are that image's), and the server did batch them."""

    def client_work(worker: int) -> list[tuple[int, dict]]:
        answers = []
        with httpx.Client(timeout=120) as client:
            for index in range(worker, len(test_pngs), 32):
                for _ in range(3):
                    response = post_png(served_run.url, test_pngs[index].read_bytes(), client, params={"top_k": 10})
                    assert response.status_code == 200, response.text
                    answers.append((index, response.json()))
        return answers

    with ThreadPoolExecutor(32) as pool:
        answers = [answer for part in pool.map(client_work, range(32)) for answer in part]
    assert len(answers) == 3 * len(test_pngs)
    for index, body in answers:
        by_label = {p["label"]: p["probability"] for p in body["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in range(10)], offline.probabilities[index], atol=1e-5)
    metrics = httpx.get(served_run.url + "/metrics", timeout=60).text
    single = metric_value(metrics, "image_classifier_batch_size_bucket", le="1.0")
    passes = metric_value(metrics, "image_classifier_batch_size_count")
    assert single < passes, "no forward pass ever held more than one image"
    assert metric_value(metrics, "image_classifier_batch_size_bucket", le="32.0") == passes  # --max_batch_size
    assert metric_value(metrics, "image_classifier_images_predicted_total") >= 3 * len(test_pngs)


def test_status_routes(served_run, trained_run):
    assert httpx.get(served_run.url + "/health", timeout=60).json() == {"status": "ok"}
    ready = httpx.get(served_run.url + "/ready", timeout=60)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metadata = httpx.get(served_run.url + "/metadata", timeout=60).json()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metadata["model"]["classes"] == list(metrics["class_accuracy"])
    assert metadata["model"]["test_accuracy"] == metrics["test_accuracy"]
    assert metadata["model"]["sha256"] == json.loads((trained_run / "run.json").read_text())["model_sha256"]
    prometheus = httpx.get(served_run.url + "/metrics", timeout=60)
    assert prometheus.headers["content-type"].startswith("text/plain")
    text = prometheus.text
    assert metric_value(text, "image_classifier_requests_total", route="/ready", status="200") >= 1
    assert metric_value(text, "image_classifier_request_duration_seconds_count", route="/ready") >= 1
    assert metric_value(text, "image_classifier_requests_in_progress") == 0
    model_info = metric_samples(text, "image_classifier_model_info")
    assert model_info == [({"sha256": metadata["model"]["sha256"], "name": "", "version": ""}, 1.0)]
    schema = httpx.get(served_run.url + "/openapi.json", timeout=60).json()
    assert {"/predict", "/predict/batch", "/health", "/ready", "/metadata", "/metrics"} <= set(schema["paths"])
    assert "Prediction" in schema["components"]["schemas"]
    assert httpx.get(served_run.url + "/docs", timeout=60).status_code == 200


@pytest.mark.parametrize(
    "case",
    ["not_an_image", "empty", "truncated", "oversized", "too_many", "bomb", "wrong_type", "batch_wrong_type"],
)
def test_bad_requests_get_a_4xx_json_error_and_the_service_lives_on(served_run, offline, case):
    good = png_bytes(offline.images[0])
    url = served_run.url
    requests = {
        "not_an_image": lambda: httpx.post(
            url + "/predict", content=b"GIF89a? no, text", headers={"Content-Type": "image/gif"}
        ),
        "empty": lambda: httpx.post(url + "/predict", content=b"", headers={"Content-Type": "image/png"}),
        "truncated": lambda: httpx.post(
            url + "/predict", content=good[: len(good) // 2], headers={"Content-Type": "image/png"}
        ),
        "oversized": lambda: httpx.post(
            url + "/predict", content=b"\x89PNG" + bytes(5 * 2**20), headers={"Content-Type": "image/png"}
        ),
        "too_many": lambda: httpx.post(
            url + "/predict/batch", files=[("files", (f"{i}.png", good, "image/png")) for i in range(65)]
        ),
        "bomb": lambda: httpx.post(
            url + "/predict", content=png_declaring(30_000, 30_000), headers={"Content-Type": "image/png"}
        ),
        "wrong_type": lambda: httpx.post(url + "/predict", content=good, headers={"Content-Type": "application/json"}),
        "batch_wrong_type": lambda: httpx.post(
            url + "/predict/batch", content=good, headers={"Content-Type": "image/png"}
        ),
    }
    expected_status = {
        "not_an_image": 415,
        "oversized": 413,
        "too_many": 413,
        "bomb": 413,
        "wrong_type": 415,
        "batch_wrong_type": 415,
    }
    response = requests[case]()
    assert response.status_code == expected_status.get(case, 400), response.text
    assert set(response.json()) == {"error"} and response.json()["error"]
    assert post_png(url, good).status_code == 200


def test_the_token_guards_every_route_but_health_and_the_docs_and_never_reaches_the_log(trained_run, offline, tmp_path):
    """The token as a secret file gives it, with a trailing newline: stripped, as clients strip theirs."""
    good = png_bytes(offline.images[0])
    env = {"SERVE_TOKEN": f"  {TOKEN}\n"}
    with running_server(tmp_path, "--model", str(trained_run), "-v", env=env) as server:
        for route in ("/health", "/docs", "/openapi.json"):
            assert httpx.get(server.url + route, timeout=60).status_code == 200, route
        for route in ("/ready", "/metadata", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = httpx.get(server.url + route, headers=headers, timeout=60)
                assert response.status_code == 401, (route, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert TOKEN not in response.text
            ok = httpx.get(server.url + route, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            assert ok.status_code == 200, route
            assert TOKEN not in ok.text
        assert post_png(server.url, good).status_code == 401
        authorised = post_png(server.url, good, token=TOKEN)
        assert authorised.status_code == 200
        stop(server)
        assert TOKEN not in server.log()
        assert "serving" in server.log()  # the log was written, at debug level, and still holds no token


@pytest.mark.parametrize("token", ["tøken-ü", "two words", "tab\tinside", "\x7f"])
def test_a_token_that_a_header_cannot_carry_is_a_usage_error_that_does_not_show_it(token, capsys, monkeypatch):
    from image_classifier.serving import serve

    monkeypatch.setenv("SERVE_TOKEN", token)
    with pytest.raises(SystemExit) as stop:
        serve.main(["--model", "anything"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "SERVE_TOKEN holds a character that an HTTP header cannot carry" in err
    assert token.strip() not in err


def test_sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_0(trained_run, offline, tmp_path):
    good = png_bytes(offline.images[0])
    with running_server(tmp_path, "--model", str(trained_run)) as server:
        # A request whose body is only half sent is in flight when SIGTERM arrives.
        in_flight = partial_request(server, "/predict", good, sent=100)
        wait_for(lambda: in_progress(server) == 1, "the request to be in progress")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(server), "the listening socket to close")
        in_flight.sendall(good[100:])
        reply = receive_all(in_flight)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["predictions"][0]["label"] == int(offline.predicted[0])
        assert server.process.wait(timeout=120) == 0, server.log()
        assert "stopped" in server.log()


def in_progress(server) -> float:
    return metric_value(httpx.get(server.url + "/metrics", timeout=60).text, "image_classifier_requests_in_progress")


def test_a_bad_model_is_one_error_line_before_any_port_is_bound(tmp_path):
    result = subprocess.run(
        [command("image_classifier_serve"), "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: no model at {tmp_path / 'missing'}")
    assert "Traceback" not in result.stderr


def test_help_and_usage_errors_do_not_import_torch():
    probe = (
        "import sys\n"
        "from image_classifier.serving import predict, serve\n"
        "for main, argv in ((serve.main, ['--help']), (predict.main, ['--help']), (serve.main, ['--port', 'x']),"
        " (serve.main, ['--model', 'm', '--reload_every', '5']), (predict.main, ['--model', 'm'])):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code in (0, 2), stop.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
    assert "--reload_every needs a model given as models:/NAME@ALIAS" in result.stderr


def test_serving_never_imports_the_training_code():
    """Neither the trainer, the training loop nor the training data's code, ever (the normalisation lives in
    normalization.py); torchvision only for its models; the run-folder module only through the registry
    (which reads runs with its helpers), i.e. only for a models:/ model."""
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "import image_classifier.serving.app, image_classifier.serving.serve, image_classifier.serving.predict\n"
        "from image_classifier.serving import model_source, registry_client\n"
        "model_source.load_model(model_source.ModelRequest(sys.argv[1]))\n"
        "print(sorted(m for m in sys.modules if m.startswith('torchvision')))  # not for the notebook's net\n"
        "training = {'trainer', 'model.training', 'run_dir', 'checkpoint', 'training_setup', 'run_record',\n"
        "            'stop_signals', 'run_comparison', 'distributed', 'reproduce', 'main'}\n"
        "data = lambda m: m.startswith('data.')  # no data reader, no batching, no database (Secret is secret.py's)\n"
        "ours = lambda: {m[len('image_classifier.'):] for m in sys.modules if m.startswith('image_classifier.')}\n"
        "loaded = lambda: sorted(m for m in ours() if m in training or data(m))\n"
        "print(loaded())\n"
        "try:\n"
        "    registry_client.resolve('models:/none@alias', Path(sys.argv[1]), None)\n"
        "except Exception as exc:\n"
        "    assert type(exc).__name__ == 'RegistryError', exc\n"
        "print(loaded())\n"
    )
    run = str(REPO_ROOT / "experiments" / "local_exp_test" / "run_1")
    result = subprocess.run([sys.executable, "-c", probe, run], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["[]", "[]", "['run_dir']"]


def test_sighup_on_a_run_folder_is_logged_and_does_not_stop_the_service(served_run):
    served_run.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while "nothing to re-resolve" not in served_run.log():
        assert time.monotonic() < deadline, served_run.log()
        time.sleep(0.2)
    assert served_run.process.poll() is None
    assert httpx.get(served_run.url + "/ready", timeout=60).status_code == 200


def test_the_docs_document_every_option_of_both_commands():
    from image_classifier.serving import predict, serve

    documented = set(re.findall(r"`(--?[a-z_]+)[` ]", page_text("serving.md")))
    for module in (serve, predict):
        options = {o for action in module.build_parser()._actions for o in action.option_strings}
        assert options - {"-h", "--help", "--version"} <= documented, options - documented


def torch_is_loaded(pid: int) -> bool:
    try:
        return "libtorch" in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


def test_sighup_during_start_up_never_kills_the_service(trained_run, tmp_path):
    """SIGHUPs from the moment torch is loaded (before the model is) until the service answers: it lives,
    serves, and says that a SIGHUP came during start-up."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [command("image_classifier_serve"), "--model", str(trained_run), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_for(lambda: process.poll() is not None or torch_is_loaded(process.pid), "torch to load", 180)
        sent = 0
        while refuses_connections(server):
            assert process.poll() is None, f"killed by the SIGHUP number {sent}:\n{server.log()}"
            process.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.05)  # the pace of the signals, not a wait for anything
        assert sent >= 1
        assert httpx.get(server.url + "/ready", timeout=60).status_code == 200
        wait_for(lambda: "SIGHUP during start-up" in server.log(), "the start-up SIGHUP to be handled")
        assert "nothing to re-resolve" in server.log()
    finally:
        assert stop(server) == 0, server.log()


KILL_THE_WORKER = """
import sys
from image_classifier.serving import model_source, serve


class WorkerKilled(BaseException):
    pass


def probabilities(self, images):
    raise WorkerKilled("injected by the test")


model_source.ServedModel.probabilities = probabilities
sys.exit(serve.main(sys.argv[1:]))
"""


def test_when_the_inference_worker_dies_the_service_exits_non_zero(trained_run, offline, tmp_path):
    """A fault injected in the forward pass (an error that is not an Exception) kills the batcher's worker:
    the request gets a 503, and the process exits 1 on its own, for its supervisor to restart it."""
    program = [sys.executable, "-c", KILL_THE_WORKER]
    with running_server(tmp_path, "--model", str(trained_run), program=program) as server:
        answer = post_png(server.url, png_bytes(offline.images[0]))
        assert answer.status_code == 503 and "the inference worker stopped" in answer.json()["error"]
        assert server.process.wait(timeout=120) == 1, server.log()
        assert "exiting with status 1: the inference worker died (WorkerKilled: injected by the test)" in server.log()


# SIGTERM at the worst instant: after serve() has put its own handler in place, before uvicorn has put its own
# (the event loop being made). Sent by the process to itself, it is handled right there.
TERM_BEFORE_UVICORN_TAKES_IT = """
import os, signal, sys
from image_classifier.serving import serve

made = serve._stoppable_server


def stoppable_server(config, on_stop):
    server = made(config, on_stop)
    run = server.run

    def run_after_a_sigterm(sockets=None):
        os.kill(os.getpid(), signal.SIGTERM)
        run(sockets=sockets)

    server.run = run_after_a_sigterm
    return server


serve._stoppable_server = stoppable_server
sys.exit(serve.main(sys.argv[1:]))
"""


def test_a_sigterm_just_before_uvicorn_takes_over_still_stops_the_service(trained_run, tmp_path):
    """It was only recorded (for the exit status): the service then served on, deaf to that stop, until a
    SIGKILL. As one of --workers N, its supervisor killed it --graceful_timeout + 30 s later and exited 1."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", TERM_BEFORE_UVICORN_TAKES_IT, "--model", str(trained_run), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert process.wait(timeout=240) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopped by SIGTERM" in log_path.read_text()


@pytest.mark.parametrize("value", ["0", "-3", "100000", "10" * 30, "2.5", "\x1b[2Jx"])
def test_workers_out_of_range_is_a_usage_error_that_does_not_show_the_value(value, capsys):
    """A mistyped count (--workers 40000 for 4) would fork that many processes, each importing torch and loading
    a model, until the machine ran out of memory or processes: refused before anything is forked."""
    from image_classifier.serving import serve

    with pytest.raises(SystemExit) as stop:
        serve.main(["--model", "anything", "--workers", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and value not in err.replace("--workers", "")
