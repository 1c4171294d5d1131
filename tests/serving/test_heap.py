"""The service's start-up objects are left out of the garbage collector's passes while it serves (heap.py):
the full collections that walked them stalled every request for up to 330 ms (README "Load")."""

from __future__ import annotations

import dataclasses
import gc
import weakref

from fastapi.testclient import TestClient

from image_classifier.serving.app import create_app
from image_classifier.serving.heap import freeze_startup_objects, unfreeze
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.model_source import load_model
from image_classifier.serving.reload import reload_model
from image_classifier.serving.settings import ServeSettings
from tests.serving.conftest import metric_value, png_bytes, variant_run


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


def test_the_collector_pauses_are_in_the_metrics(trained_run):
    with TestClient(create_app(ServeSettings(model=ModelRequest(str(trained_run))))) as client:
        before = client.get("/metrics").text
        gc.collect()  # a full collection, as the collector starts one by itself under load
        gc.collect(0)
        after = client.get("/metrics").text
    name = "image_classifier_gc_collections_total"
    assert metric_value(after, name, generation="2") >= metric_value(before, name, generation="2") + 1
    assert metric_value(after, name, generation="0") >= metric_value(before, name, generation="0") + 1
    paused = "image_classifier_gc_pause_seconds_total"
    assert metric_value(after, paused, generation="2") > metric_value(before, paused, generation="2")
    assert metric_value(after, "image_classifier_gc_longest_pause_seconds", generation="2") > 0
    assert not any(callback.__self__.__class__.__name__ == "CollectorPauses" for callback in _bound(gc.callbacks))


def _bound(callbacks: list) -> list:
    return [callback for callback in callbacks if hasattr(callback, "__self__")]


def test_a_frozen_model_is_still_freed_when_a_reload_drops_it(trained_run):
    """Frozen objects are never walked by the collector: a model held from start-up that a reload replaces
    must be freed by reference counting alone (no reference cycle through it), or every swap would leak one."""
    model = load_model(ModelRequest(str(trained_run)))
    references = [weakref.ref(model), weakref.ref(model.net), weakref.ref(model.info)]
    freeze_startup_objects()
    try:
        assert not tracked(model.net)
        del model
        assert [reference() for reference in references] == [None, None, None]
    finally:
        unfreeze()


def test_models_swapped_out_by_reloads_are_freed_while_the_service_holds_its_start_up_objects_frozen(
    trained_run, offline, tmp_path
):
    """The swap path itself (reload.py, after requests were answered by the model): every model a reload drops,
    the frozen start-up one first, is freed at once by reference counting. A reference cycle through one would
    keep it (and its weights) for ever in the permanent generation, or until a full collection: repeated SIGHUPs
    would then grow the process without bound."""
    variant = variant_run(trained_run, tmp_path / "variant", change=lambda state: state["fc3.bias"].add_(1.0))
    runs = [variant, trained_run]
    image = png_bytes(offline.images[0])
    with TestClient(create_app(ServeSettings(model=ModelRequest(str(trained_run))))) as client:
        state = client.app.state.service
        gc.disable()  # only reference counting may free them
        try:
            for swap in range(4):
                answer = client.post("/predict", content=image, headers={"Content-Type": "image/png"})
                assert answer.status_code == 200
                dropped = [weakref.ref(state.model), weakref.ref(state.model.net)]
                state.settings = dataclasses.replace(state.settings, model=ModelRequest(str(runs[swap % 2])))
                client.portal.call(reload_model, state, "test")
                assert dropped[0]() is not state.model, "no swap happened"
                assert [reference() for reference in dropped] == [None, None], f"swap {swap}"
        finally:
            gc.enable()
