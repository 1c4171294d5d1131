"""The service's start-up objects are left out of the garbage collector's passes while it serves (heap.py):
the full collections that walked them stalled every request for 100-330 ms (README "Load")."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from image_classifier.serving.app import create_app
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.settings import ServeSettings
from tests.serving.conftest import png_bytes


def tracked(thing: object) -> bool:
    """Whether a collection can still walk it (frozen objects are in no generation)."""
    return any(candidate is thing for candidate in gc.get_objects())


def test_the_model_and_modules_are_exempt_from_collections_while_serving(trained_run, offline):
    with TestClient(create_app(ServeSettings(model=ModelRequest(str(trained_run))))) as client:
        net = client.app.state.service.model.net
        assert not tracked(net)
        assert not tracked(gc.__dict__)  # a module's namespace, imported long before
        assert gc.get_freeze_count() > 10_000  # torch's objects
        answer = client.post("/predict", content=png_bytes(offline.images[0]), headers={"Content-Type": "image/png"})
        assert answer.status_code == 200
        made_while_serving: list = []
        made_while_serving.append(made_while_serving)  # a cycle: only the collector frees it
        assert tracked(made_while_serving)
    assert tracked(net)  # handed back at stop: a test process's later collections see it again
    assert gc.get_freeze_count() == 0
