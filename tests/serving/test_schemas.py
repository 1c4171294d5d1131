"""Every JSON answer of every route fits the schema the app declares for it (its /openapi.json, what /docs
shows), strictly: no key the schema does not name, none it requires missing. And the bytes of an answer stay
what they were before the answers were built from the pydantic models: compact JSON, keys in schema order."""

from __future__ import annotations

import copy
import json

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from image_classifier.secret import Secret
from image_classifier.serving.app import create_app
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.settings import ServeSettings
from tests.serving.conftest import png_bytes

TOKEN = "abc"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(trained_run):
    settings = ServeSettings(
        model=ModelRequest(str(trained_run)), token=Secret(TOKEN), max_upload_bytes=64 * 1024, max_batch_images=4
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def strict(node):
    """The schema with every object that names its properties closed to others: a hand-built answer with an
    extra key must fail, not pass as 'additional'."""
    if isinstance(node, dict):
        node = {key: strict(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(value) for value in node]
    return node


def check(openapi: dict, method: str, path: str, response) -> None:
    declared = openapi["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in declared, (method, path, response.status_code, sorted(declared))
    assert response.headers["content-type"] == "application/json"
    schema = declared[str(response.status_code)]["content"]["application/json"]["schema"]
    # Its $refs point into the document's components: give them to the validator at the schema's root.
    root = strict({**copy.deepcopy(schema), "components": openapi["components"]})
    errors = sorted(Draft202012Validator(root).iter_errors(response.json()), key=str)
    assert not errors, (method, path, [error.message for error in errors])


def requests(offline) -> list[tuple[str, str, dict, int]]:
    """(method, path, request arguments, expected status): each route's answers, good and bad."""
    good = png_bytes(offline.images[0])
    png = {"Content-Type": "image/png", **AUTH}
    batch = [("files", (f"{i}.png", png_bytes(offline.images[i]), "image/png")) for i in range(3)]
    return [
        ("GET", "/health", {}, 200),
        ("GET", "/ready", {"headers": AUTH}, 200),
        ("GET", "/ready", {}, 401),
        ("GET", "/metadata", {"headers": AUTH}, 200),
        ("GET", "/metrics", {}, 401),
        ("GET", "/metadata", {"headers": {"Authorization": "Bearer wrong"}}, 401),
        ("POST", "/predict", {"content": good, "headers": png}, 200),
        ("POST", "/predict?top_k=50", {"content": good, "headers": png}, 200),
        ("POST", "/predict", {"files": {"file": ("x.png", good, "image/png")}, "headers": AUTH}, 200),
        ("POST", "/predict", {"content": b"not an image", "headers": png}, 415),
        (
            "POST",
            "/predict",
            {"files": {"a": ("a.png", good, "image/png"), "b": ("b.png", good, "image/png")}, "headers": AUTH},
            400,
        ),
        ("POST", "/predict", {"content": b"\0" * (65 * 1024), "headers": png}, 413),
        ("POST", "/predict", {"content": good, "headers": {"Content-Type": "text/plain", **AUTH}}, 415),
        ("POST", "/predict?top_k=0", {"content": good, "headers": png}, 422),
        ("POST", "/predict/batch", {"files": batch, "headers": AUTH}, 200),
        ("POST", "/predict/batch", {"files": batch * 2, "headers": AUTH}, 413),
        ("POST", "/predict/batch", {"content": good, "headers": png}, 415),
    ]


def test_every_json_answer_fits_the_declared_schema(client, offline):
    openapi = client.get("/openapi.json").json()
    seen = set()
    for method, path, arguments, status in requests(offline):
        response = client.request(method, path, **arguments)
        assert response.status_code == status, (method, path, response.text)
        check(openapi, method, path.partition("?")[0], response)
        seen.add((method.lower(), path.partition("?")[0]))
    # A new route must join the list above (/metrics: only its errors are JSON, its answer is Prometheus text).
    declared = {(method, path) for path, methods in openapi["paths"].items() for method in methods}
    assert declared == seen
    metrics = client.get("/metrics", headers=AUTH)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")


def test_a_key_the_schema_does_not_name_fails_the_check(client, offline):
    """The check above can fail: an answer with one key more than its schema, or one fewer, is refused."""
    openapi = client.get("/openapi.json").json()
    response = client.post(
        "/predict", content=png_bytes(offline.images[0]), headers={"Content-Type": "image/png", **AUTH}
    )

    class Altered:
        status_code, headers = response.status_code, response.headers

        def __init__(self, body):
            self.body = body

        def json(self):
            return self.body

    extra = response.json()
    extra["predictions"][0]["rank"] = 1
    missing = response.json()
    del missing["model"]["sha256"]
    for body in (extra, missing):
        with pytest.raises(AssertionError):
            check(openapi, "POST", "/predict", Altered(body))


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_prediction_bodies_are_compact_json_in_schema_order(client, offline, path):
    good = png_bytes(offline.images[1])
    if path == "/predict":
        response = client.post(path, content=good, headers={"Content-Type": "image/png", **AUTH})
    else:
        response = client.post(path, files=[("files", ("a.png", good, "image/png"))], headers=AUTH)
    body = response.json()
    assert response.content == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert list(body) == (["predictions", "model"] if path == "/predict" else ["results", "model"])
    assert list(body["model"]) == ["sha256", "name", "version", "source"]
    predictions = body["predictions"] if path == "/predict" else body["results"][0]["predictions"]
    assert path == "/predict" or list(body["results"][0]) == ["filename", "predictions"]
    assert [list(entry) for entry in predictions] == [["class", "label", "probability"]] * len(predictions)
