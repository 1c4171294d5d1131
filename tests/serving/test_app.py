"""create_app in process (FastAPI's TestClient runs the lifespan): request shapes the end-to-end tests do not
send, and the app's own contract (the model loaded in the lifespan, JSON errors everywhere)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from image_classifier.secret import Secret
from image_classifier.serving.app import create_app
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.settings import ServeSettings
from tests.serving.conftest import metric_value, png_bytes, variant_run


def encode_png(hwc: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(trained_run):
    settings = ServeSettings(model=ModelRequest(str(trained_run)), max_upload_bytes=64 * 1024, max_batch_images=4)
    with TestClient(create_app(settings)) as test_client:  # the lifespan loads the model from the settings
        yield test_client


def test_the_lifespan_loads_the_model(client, trained_run):
    assert client.get("/ready").json()["status"] == "ready"
    assert client.get("/metadata").json()["model"]["source"] == str(trained_run)


def test_multipart_and_raw_bodies_give_the_same_answer(client, offline):
    good = png_bytes(offline.images[3])
    raw = client.post("/predict", content=good, headers={"Content-Type": "application/octet-stream"}).json()
    multipart = client.post("/predict", files={"file": ("x.png", good, "image/png")}).json()
    assert raw == multipart
    assert raw["predictions"][0]["label"] == offline.predicted[3]


@pytest.mark.parametrize(
    "files, status, message",
    [
        ([], 400, "no image in the request"),
        ([("a", "a.png"), ("b", "b.png")], 400, "use /predict/batch"),
    ],
)
def test_predict_takes_exactly_one_image(client, offline, files, status, message):
    good = png_bytes(offline.images[0])
    # Without files, a multipart form with one text field (a part without a filename is not a file).
    parts = [(field, (name, good, "image/png")) for field, name in files] or {"field": (None, "text only")}
    response = client.post("/predict", files=parts)
    assert response.status_code == status and message in response.json()["error"]


def test_a_bad_image_in_a_batch_is_named(client, offline):
    good = png_bytes(offline.images[0])
    files = [("files", ("good.png", good, "image/png")), ("files", ("bad.png", b"nope", "image/png"))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 415
    assert response.json()["error"].startswith("image 2 (bad.png): not an image")


def test_a_photo_with_a_mistyped_exif_tag_is_answered_as_its_turned_pixels(client, offline):
    """Its EXIF block (orientation 6 beside a mistyped tag) made the conversion raise AttributeError: a 500."""
    from tests.test_images import MISTYPED_EXIF

    hwc = offline.images[5].transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, "PNG", exif=MISTYPED_EXIF["Software as a number"])
    with_exif = client.post("/predict", content=buffer.getvalue(), headers={"Content-Type": "image/png"})
    turned = encode_png(np.ascontiguousarray(np.rot90(hwc, k=-1)))  # orientation 6: 90 degrees clockwise
    assert with_exif.status_code == 200, with_exif.text
    assert with_exif.json() == client.post("/predict", content=turned, headers={"Content-Type": "image/png"}).json()


def test_a_chunked_upload_is_cut_off_at_the_limit(client):
    def chunks():
        for _ in range(100):
            yield b"\x00" * 1024  # 100 KB, no Content-Length: counted as it arrives

    response = client.post("/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and "65,536 bytes" in response.json()["error"]


def test_invalid_parameters_and_unknown_routes_are_json_errors(client, offline):
    good = png_bytes(offline.images[0])
    response = client.post("/predict?top_k=0", content=good, headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and response.json()["error"].startswith("invalid request: query.top_k")
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405


def test_top_k_larger_than_the_classes_gives_every_class(client, offline):
    good = png_bytes(offline.images[0])
    answer = client.post("/predict?top_k=50", content=good, headers={"Content-Type": "image/png"}).json()
    assert sorted(p["label"] for p in answer["predictions"]) == list(range(10))
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-5)


def test_the_token_is_compared_exactly(trained_run, offline):
    settings = ServeSettings(model=ModelRequest(str(trained_run)), token=Secret("abc"))
    with TestClient(create_app(settings)) as client:
        for given in ("ab", "abcd", "ABC", "abc\tx", ""):
            assert client.get("/ready", headers={"Authorization": f"Bearer {given}"}).status_code == 401, given
        assert client.get("/ready", headers={"Authorization": "Bearer abc"}).status_code == 200
        assert client.get("/ready", headers={"Authorization": "bearer abc"}).status_code == 200  # scheme: any case


def multipart_body(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    """A multipart/form-data body of file parts (filename, bytes), built by hand: many parts, quickly."""
    pieces = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode() + payload + b"\r\n"
        for name, payload in parts
    ]
    return b"".join(pieces) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def roomy(trained_run):
    """Default limits, but forward passes of at most 4 images."""
    settings = ServeSettings(model=ModelRequest(str(trained_run)), max_batch_size=4)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_more_file_parts_than_max_batch_images_is_413_even_past_a_thousand(roomy, offline):
    """The README's 413 for more than --max_batch_images images held only up to Starlette's own limit of
    1,000 files, which answered 400."""
    good = png_bytes(offline.images[0])
    for count in (65, 1_001):
        body, content_type = multipart_body([(f"{i}.png", good[:10]) for i in range(count)])
        response = roomy.post("/predict/batch", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 413, (count, response.text)
        assert "the limit is 64 (--max_batch_images)" in response.json()["error"]


def test_a_forward_pass_holds_at_most_max_batch_size_images(roomy, offline):
    """A request of 10 images with --max_batch_size 4 runs as passes of 4, 4 and 2 (one model), and each
    image gets the probabilities it gets alone."""
    before = metric_value(roomy.get("/metrics").text, "image_classifier_batch_size_count")
    files = [("files", (f"{i}.png", png_bytes(offline.images[i]), "image/png")) for i in range(10)]
    answer = roomy.post("/predict/batch?top_k=10", files=files)
    assert answer.status_code == 200, answer.text
    metrics = roomy.get("/metrics").text
    assert metric_value(metrics, "image_classifier_batch_size_count") - before == 3
    assert metric_value(metrics, "image_classifier_batch_size_bucket", le="2.0") == 1
    assert metric_value(metrics, "image_classifier_batch_size_bucket", le="4.0") == 3
    for index, result in enumerate(answer.json()["results"]):
        by_label = {p["label"]: p["probability"] for p in result["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in range(10)], offline.probabilities[index], atol=1e-5)


def test_the_declared_pixels_of_a_request_have_a_budget(trained_run):
    square = encode_png(np.zeros((64, 64, 3), np.uint8))
    files = [("files", (f"{i}.png", square, "image/png")) for i in range(3)]
    settings = ServeSettings(model=ModelRequest(str(trained_run)), max_request_pixels=3 * 64 * 64)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict/batch", files=files).status_code == 200
        response = client.post("/predict/batch", files=files + [("files", ("3.png", square, "image/png"))])
        assert response.status_code == 413
        assert response.json()["error"] == (
            "image 4 (3.png): too many pixels in one request: its images declare more than 12,288 pixels in all "
            "(--max_request_pixels)"
        )


def test_a_failing_forward_pass_is_a_json_500_and_the_service_lives_on(trained_run, offline, caplog):
    good = png_bytes(offline.images[0])
    with TestClient(create_app(ServeSettings(model=ModelRequest(str(trained_run))))) as client:
        state = client.app.state.service
        working = state.model

        class Broken:
            info, classes, image_size = working.info, working.classes, working.image_size

            def probabilities(self, images):
                raise RuntimeError("CUDA error: an illegal memory access was encountered")

        state.model = Broken()
        response = client.post("/predict", content=good, headers={"Content-Type": "image/png"})
        assert response.status_code == 500
        assert response.json() == {"error": "the model failed on this request's batch (see the log)"}
        assert "illegal memory access" in caplog.text and "Traceback" in caplog.text
        state.model = working
        assert client.post("/predict", content=good, headers={"Content-Type": "image/png"}).status_code == 200


def test_an_unexpected_error_is_a_json_500_with_its_traceback_logged(trained_run, offline, caplog, monkeypatch):
    from image_classifier.serving import routes

    def broken_top_k(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(routes, "top_k", broken_top_k)
    with TestClient(
        create_app(ServeSettings(model=ModelRequest(str(trained_run)))), raise_server_exceptions=False
    ) as client:
        response = client.post("/predict", content=png_bytes(offline.images[0]), headers={"Content-Type": "image/png"})
        assert response.status_code == 500
        assert response.json() == {"error": "unexpected error in the service (logged)"}
        assert "KeyError: 'a bug'" in caplog.text and "Traceback" in caplog.text
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "image_classifier_errors_total", route="/predict", status="500") == 1


class WorkerKilled(BaseException):
    """Not an Exception: what no forward pass raises, so the batcher's worker itself ends."""


def test_when_the_inference_worker_dies_ready_says_so_and_exit_is_requested(trained_run, offline):
    good = png_bytes(offline.images[0])
    with TestClient(create_app(ServeSettings(model=ModelRequest(str(trained_run))))) as client:
        state = client.app.state.service
        exits = []
        state.request_exit = lambda: exits.append(1)
        working = state.model

        class Killing:
            info, classes, image_size = working.info, working.classes, working.image_size

            def probabilities(self, images):
                raise WorkerKilled()

        state.model = Killing()
        response = client.post("/predict", content=good, headers={"Content-Type": "image/png"})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "the inference worker stopped" in response.json()["error"]
        state.model = working
        ready = client.get("/ready")
        assert ready.status_code == 503 and "inference worker stopped (WorkerKilled" in ready.json()["error"]
        assert client.post("/predict", content=good, headers={"Content-Type": "image/png"}).status_code == 503
        assert exits == [1]


def test_the_docs_page_and_its_files_come_from_the_service_not_a_cdn(trained_run):
    settings = ServeSettings(model=ModelRequest(str(trained_run)), token=Secret("abc"))
    with TestClient(create_app(settings)) as client:
        page = client.get("/docs")
        assert page.status_code == 200  # no token: the page and the schema hold nothing secret
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert sources and all(source.startswith("/") for source in sources), sources
        for source in sources:
            assert client.get(source).status_code == 200, source
        assert client.get("/docs/static/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert client.get("/metadata").status_code == 401


class _FakeModel:
    """A served model of one input size, answering its size for every image."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def probabilities(self, images):
        assert images.shape[-1] == self.image_size, "images of another size reached the model"
        return np.full((len(images), 1), self.image_size)


def test_a_batch_decoded_for_the_model_a_reload_replaced_is_answered_by_that_model():
    from image_classifier.serving.state import ServiceState

    state = ServiceState(ServeSettings(model=ModelRequest("m")), model=_FakeModel(64))
    state.previous_model = _FakeModel(32)
    answer, model = state.infer(np.zeros((2, 3, 32, 32), dtype=np.uint8))
    assert model is state.previous_model and answer.tolist() == [[32], [32]]
    answer, model = state.infer(np.zeros((1, 3, 64, 64), dtype=np.uint8))
    assert model is state.model and answer.tolist() == [[64]]


def test_the_answers_bytes_are_those_the_service_always_sent(trained_run, offline, tmp_path):
    """Built from the pydantic models since issue 17, the answers keep the bytes of the dicts they replaced:
    compact JSON, keys in the documented order, floats as Python writes them, non-ASCII names unescaped."""
    classes = [f"klasse-{index}-é猫" for index in range(10)]
    run = variant_run(trained_run, tmp_path / "run", classes=classes)
    with TestClient(create_app(ServeSettings(model=ModelRequest(str(run)), top_k=3))) as client:
        image = png_bytes(offline.images[0])
        single = client.post("/predict", content=image, headers={"Content-Type": "image/png"})
        batch = client.post("/predict/batch", files=[("files", ("ä.png", image, "image/png"))] * 2)

    def compact(value) -> bytes:  # Starlette's JSONResponse, as the routes used it before
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def entries(predictions):
        return [{"class": p["class"], "label": p["label"], "probability": p["probability"]} for p in predictions]

    answer = single.json()
    model = {key: answer["model"][key] for key in ("sha256", "name", "version", "source")}
    assert single.content == compact({"predictions": entries(answer["predictions"]), "model": model})
    assert answer["predictions"][0]["class"] in classes and "é猫".encode() in single.content
    results = [{"filename": r["filename"], "predictions": entries(r["predictions"])} for r in batch.json()["results"]]
    assert batch.content == compact({"results": results, "model": model})
