"""The HTTP service: the app factory `create_app(settings) -> FastAPI` and its lifespan (loading the model,
starting the batcher and the thread pools, SIGHUP, stopping in order).

Routes (routes.py): POST /predict (one image), POST /predict/batch (several), GET /health, /ready, /metadata,
/metrics; and /docs (Swagger UI, its files served from the fastapi-offline package, never a CDN) and
/openapi.json. Every error is a JSON object {"error": "..."} (error_responses.py): 4xx for what a client got
wrong, 503 with Retry-After when the service cannot take the request now, and 500 (its traceback logged) for
the unexpected. The shared state is state.py's ServiceState; the hot swap is reload.py.

What a request can hold, and for how long, is bounded (uploads.py, admission.py): docs/serving.md,
"Bounds", states them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from image_classifier import __version__
from image_classifier.serving import registry_client
from image_classifier.serving.admission import STOP_MARGIN_S
from image_classifier.serving.batching import MicroBatcher
from image_classifier.serving.error_responses import CatchAll, add_error_handlers
from image_classifier.serving.heap import freeze_startup_objects, unfreeze
from image_classifier.serving.metrics import RequestMetrics
from image_classifier.serving.model_source import ServedModel, load_model
from image_classifier.serving.reload import on_sighup, reload_every
from image_classifier.serving.routes import build_router
from image_classifier.serving.settings import ServeSettings
from image_classifier.serving.state import ServiceState
from image_classifier.serving.uploads import UploadLimit
from image_classifier.serving.workers import DaemonPool

logger = logging.getLogger(__name__)


def create_app(
    settings: ServeSettings, model: ServedModel | None = None, hangup_before_start: Callable[[], bool] | None = None
) -> FastAPI:
    """The service; `model` is loaded from `settings.model` at startup unless given already loaded.

    `hangup_before_start` says whether a SIGHUP arrived before the app started (the command catches them from
    its first line on): the alias is then re-resolved once the app serves.
    """
    state = ServiceState(settings=settings, model=model)
    app = FastAPIOffline(
        title="image-classifier",
        version=__version__,
        summary="image classifier predictions (the CIFAR-10 tutorial CNN, or a torchvision model)",
        description="Use **Authorize** to enter the bearer token (`SERVE_TOKEN`) when the service has one: "
        "/docs and /openapi.json need none, every other route but /health does.",
        lifespan=_lifespan(state, hangup_before_start or (lambda: False)),
        docs_url="/docs",
        redoc_url=None,
        static_url="/docs/static",
        favicon_url="/docs/static/favicon.png",
    )
    app.state.service = state
    add_error_handlers(app)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(CatchAll)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    app.include_router(build_router(state))
    return app


def _lifespan(state: ServiceState, hangup_before_start: Callable[[], bool]):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = state.settings
        loop = asyncio.get_running_loop()
        state.loop = loop
        state.loader = DaemonPool(1, "model-loader")
        state.decoders = DaemonPool(settings.decode_workers, "decode")
        reloadable = registry_client.is_alias_uri(settings.model.model)

        def hangup() -> None:
            if state.batcher is None:  # still starting: re-resolved once serving
                state.hangup_pending = True
            else:
                _keep(state, loop.create_task(on_sighup(state, reloadable)))

        # Signal handlers belong to the main thread (not so under TestClient). SIGHUP is handled even when there
        # is nothing to re-resolve: its default action would kill the service.
        on_signal = threading.current_thread() is threading.main_thread()
        if on_signal:
            loop.add_signal_handler(signal.SIGHUP, hangup)
        if state.model is None:
            state.model = await loop.run_in_executor(state.loader, load_model, settings.model)
        state.batcher = MicroBatcher(state.infer, settings.max_batch_size, settings.max_wait_ms, state.worker_died)
        state.batcher.start()
        if state.hangup_pending or hangup_before_start():
            _keep(state, loop.create_task(on_sighup(state, reloadable, "SIGHUP during start-up")))
        periodic = loop.create_task(reload_every(state)) if reloadable and settings.reload_every else None
        logger.info("serving %s (sha256 %s)", settings.model.model, state.model.info.sha256[:12])
        freeze_startup_objects()  # the collector's full passes would otherwise stall every request (heap.py)
        state.metrics.gc_pauses.start()
        try:
            yield
        finally:
            state.metrics.gc_pauses.stop()
            unfreeze()
            if on_signal:
                loop.remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not the default action (death) while stopping
            if periodic is not None:
                periodic.cancel()
            for task in list(state.tasks):
                task.cancel()  # a reload still loading: its daemon thread is abandoned, never waited for
            # By now every connection is closed (or was cut at --graceful_timeout): what is queued is answered
            # in milliseconds, or dropped.
            await state.batcher.stop(timeout=STOP_MARGIN_S)
            state.decoders.shutdown(wait=False, cancel_futures=True)
            state.loader.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    return lifespan


def _keep(state: ServiceState, task: asyncio.Task) -> None:
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
