"""The service's bounds as a client meets them, on real processes: limits given on the command line, a full
queue, a deadline, a client that goes away, and a stop that runs out of --graceful_timeout."""

from __future__ import annotations

import io
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.serving.conftest import (
    metric_value,
    partial_request,
    png_bytes,
    receive_all,
    running_server,
    split_response,
    wait_for,
)

pytestmark = pytest.mark.slow


def png_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def webp_declaring(side: int) -> bytes:
    """A lossless WebP of a few KB that decodes to side x side pixels (a second or more, at 36 MP)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def metrics_of(server) -> str:
    return httpx.get(server.url + "/metrics", timeout=60).text


def in_progress(server) -> float:
    return metric_value(metrics_of(server), "image_classifier_requests_in_progress")


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, timeout=120, **kwargs)


def test_the_limits_given_on_the_command_line_hold(trained_run, tmp_path):
    limits = {
        "--max_upload_bytes": "20000",
        "--max_batch_images": "2",
        "--max_image_pixels": "4096",
        "--max_request_pixels": "5000",
    }
    args = [item for pair in limits.items() for item in pair]
    with running_server(tmp_path, "--model", str(trained_run), *args) as server:
        metadata = httpx.get(server.url + "/metadata", timeout=60).json()
        assert {f"--{key}": str(metadata[key]) for key in [name[2:] for name in limits]} == limits

        raw = {"headers": {"Content-Type": "image/png"}}
        too_big = post(server, "/predict", content=b"\x89PNG" + bytes(20_000 - 3), **raw)
        assert too_big.status_code == 413 and "the limit is 20,000 bytes" in too_big.json()["error"]
        assert post(server, "/predict", content=png_of_size(64, 64), **raw).status_code == 200  # 4,096 pixels
        wide = post(server, "/predict", content=png_of_size(65, 64), **raw)
        assert wide.status_code == 413 and "4,160 pixels, more than the limit of 4,096" in wide.json()["error"]

        def batch(*sizes):
            files = [("files", (f"{i}.png", png_of_size(*size), "image/png")) for i, size in enumerate(sizes)]
            return post(server, "/predict/batch", files=files)

        assert batch((50, 50), (50, 50)).status_code == 200  # 5,000 pixels in all
        over = batch((50, 50), (50, 51))
        assert over.status_code == 413 and "more than 5,000 pixels in all" in over.json()["error"]
        many = batch((8, 8), (8, 8), (8, 8))
        assert many.status_code == 413 and "the limit is 2 (--max_batch_images)" in many.json()["error"]


def test_a_full_queue_and_a_passed_deadline_answer_503_with_retry_after(trained_run, offline, tmp_path):
    good = png_bytes(offline.images[0])
    args = ["--model", str(trained_run), "--max_queue", "1", "--request_timeout", "4"]
    with running_server(tmp_path, *args) as server:
        stalled = partial_request(server, "/predict", good, sent=100)  # admitted; its body never ends
        wait_for(lambda: in_progress(server) == 1, "the stalled request to be admitted")
        full = post(server, "/predict", content=good, headers={"Content-Type": "image/png"})
        assert full.status_code == 503 and full.headers["retry-after"] == "1", full.text
        assert "busy: 1 requests are in progress (--max_queue)" in full.json()["error"]

        started = time.monotonic()
        status, headers, body = split_response(receive_all(stalled))
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {"error": "no answer within 4 s (--request_timeout): try again later"}
        assert time.monotonic() - started < 4 + 30  # answered at its deadline, not left hanging

        assert post(server, "/predict", content=good, headers={"Content-Type": "image/png"}).status_code == 200
        metrics = metrics_of(server)
        assert metric_value(metrics, "image_classifier_dropped_requests_total", reason="full") == 1
        assert metric_value(metrics, "image_classifier_dropped_requests_total", reason="deadline") == 1
        assert metric_value(metrics, "image_classifier_requests_in_progress") == 0


def test_the_work_of_a_client_that_disconnects_is_dropped(trained_run, offline, tmp_path):
    """One decoding thread, busy with a 36 MP image; a batch of 8 images queued behind it whose client
    hangs up is never decoded nor computed."""
    big = webp_declaring(6000)
    files = [("files", (f"{i}.png", png_bytes(offline.images[i]), "image/png")) for i in range(8)]
    batch = httpx.Request("POST", "/predict/batch", files=files)
    with running_server(tmp_path, "--model", str(trained_run), "--decode_workers", "1") as server:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(post, server, "/predict", content=big, headers={"Content-Type": "image/webp"})
            wait_for(lambda: in_progress(server) == 1, "the big image's request to be admitted")
            hanging_up = partial_request(
                server,
                "/predict/batch",
                batch.read(),
                sent=len(batch.read()),
                content_type=batch.headers["content-type"],
            )
            wait_for(lambda: in_progress(server) == 2, "the batch to be admitted")
            hanging_up.close()
            assert answer.result().status_code == 200
        wait_for(lambda: in_progress(server) == 0, "the dropped batch to leave")
        metrics = metrics_of(server)
        assert metric_value(metrics, "image_classifier_images_predicted_total") == 1, "the batch was computed"
        assert metric_value(metrics, "image_classifier_dropped_requests_total", reason="disconnected") == 1
        assert metric_value(metrics, "image_classifier_requests_total", route="/predict/batch", status="499") == 1


def test_sigterm_answers_503_before_the_graceful_timeout_runs_out_then_exits_0(trained_run, offline, tmp_path):
    good = png_bytes(offline.images[0])
    with running_server(tmp_path, "--model", str(trained_run), "--graceful_timeout", "6") as server:
        stalled = partial_request(server, "/predict", good, sent=100)  # its body never ends
        wait_for(lambda: in_progress(server) == 1, "the stalled request to be admitted")
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status, headers, body = split_response(receive_all(stalled))
        answered_after = time.monotonic() - stopped_at
        assert status == 503 and headers["retry-after"] == "1", body
        assert json.loads(body) == {"error": "the service is shutting down"}
        assert server.process.wait(timeout=120) == 0, server.log()
        exited_after = time.monotonic() - stopped_at
        # Answered a second before the 6 s are out; the process ends right after (a generous margin for a busy
        # machine: what is asserted is that nothing waits for the stalled body).
        assert answered_after < 6, answered_after
        assert exited_after < 6 + 10, (exited_after, server.log())
        assert "stopped by SIGTERM" in server.log()
