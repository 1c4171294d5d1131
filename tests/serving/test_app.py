"""create_app in process (FastAPI's TestClient runs the lifespan): request shapes the end-to-end tests do not
send, and the app's own contract (the model loaded in the lifespan, JSON errors everywhere)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from image_classifier.data.database import Secret
from image_classifier.serving.app import create_app
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.settings import ServeSettings
from tests.serving.conftest import png_bytes


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


class _FakeModel:
    """A served model of one input size, answering its size for every image."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def probabilities(self, images):
        assert images.shape[-1] == self.image_size, "images of another size reached the model"
        return np.full((len(images), 1), self.image_size)


def test_a_batch_decoded_for_the_model_a_reload_replaced_is_answered_by_that_model():
    from image_classifier.serving.app import Metrics, ServiceState

    state = ServiceState(ServeSettings(model=ModelRequest("m")), Metrics(4), model=_FakeModel(64))
    state.previous_model = _FakeModel(32)
    answer, model = state.infer(np.zeros((2, 3, 32, 32), dtype=np.uint8))
    assert model is state.previous_model and answer.tolist() == [[32], [32]]
    answer, model = state.infer(np.zeros((1, 3, 64, 64), dtype=np.uint8))
    assert model is state.model and answer.tolist() == [[64]]
