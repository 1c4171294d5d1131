"""The HTTP service: `create_app(settings) -> FastAPI`, its state and its lifespan.

Routes (routes.py): POST /predict (one image), POST /predict/batch (several), GET /health, /ready, /metadata,
/metrics; and /docs (Swagger UI, its files served from the fastapi-offline package, never a CDN) and
/openapi.json. Every error is a JSON object {"error": "..."}: 4xx for what a client got wrong, 503 with
Retry-After when the service cannot take the request now, and 500 (its traceback logged) for the unexpected.

What a request can hold, and for how long, is bounded (uploads.py, admission.py): the README's "Serving
predictions" states the bounds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from image_classifier import __version__
from image_classifier.errors import ImageError
from image_classifier.serving import registry_client
from image_classifier.serving.admission import RETRY_AFTER_S, STOP_MARGIN_S, Admission, ClientGone, Unavailable
from image_classifier.serving.batching import BatcherStopped, InferenceFailed, MicroBatcher
from image_classifier.serving.heap import freeze_startup_objects, unfreeze
from image_classifier.serving.metrics import Metrics, RequestMetrics
from image_classifier.serving.model_source import ServedModel, load_model
from image_classifier.serving.reload import on_sighup, reload_every
from image_classifier.serving.routes import build_router
from image_classifier.serving.settings import ServeSettings
from image_classifier.serving.uploads import UploadLimit, UploadLimits
from image_classifier.serving.workers import DaemonPool

logger = logging.getLogger(__name__)

# nginx's code for "the client closed the request": counted in the metrics, never received by anyone.
CLIENT_GONE = 499


@dataclass
class ServiceState:
    settings: ServeSettings
    model: ServedModel | None = None
    # The model a reload replaced by one of another input size: requests decoded for it just before the swap
    # are still answered by it.
    previous_model: ServedModel | None = None
    metrics: Metrics = field(init=False)
    admission: Admission = field(init=False)
    limits: UploadLimits = field(init=False)
    batcher: MicroBatcher | None = None
    decoders: DaemonPool | None = None
    loader: DaemonPool | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set = field(default_factory=set)  # the event loop keeps only weak references to tasks
    loop: asyncio.AbstractEventLoop | None = None
    hangup_pending: bool = False
    # Set by the command that runs the server: ends it (the inference worker died, so the process must go).
    request_exit: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        settings = self.settings
        self.metrics = Metrics(settings.max_batch_size, lambda: self.model)
        self.admission = Admission(settings.max_queue, settings.request_timeout, self._dropped)
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self.limits = UploadLimits(
            settings.max_upload_bytes, settings.max_batch_images, settings.max_image_pixels, settings.max_request_pixels
        )

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, ServedModel]:
        """In the inference thread: one model for the whole batch, even if a reload swaps it meanwhile, and
        forward passes of at most --max_batch_size images. The batch's images were decoded at the input size
        of the model served then (the batcher never mixes sizes): after a swap to a model of another size,
        those few requests are answered by the model they were decoded for."""
        model = self.model
        previous = self.previous_model
        if images.shape[-1] != model.image_size and previous is not None and images.shape[-1] == previous.image_size:
            model = previous
        step = self.settings.max_batch_size
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            parts.append(model.probabilities(chunk))
            self.metrics.observe_batch(len(chunk))
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), model

    def begin_stop(self) -> None:
        """Safe from a signal handler: the stop reaches the admission on the event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.admission.begin_stop, self.settings.graceful_timeout)

    def worker_died(self, failure: str) -> None:
        logger.critical("not ready any more: the inference worker died (%s); exiting so that it is restarted", failure)
        if self.request_exit is not None:
            self.request_exit()

    def _dropped(self, reason: str) -> None:
        self.metrics.dropped.labels(reason).inc()


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
    _add_error_handlers(app)
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


def _add_error_handlers(app: FastAPI) -> None:
    retry = {"Retry-After": str(RETRY_AFTER_S)}

    @app.exception_handler(ImageError)
    async def image_error(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers=retry)

    @app.exception_handler(BatcherStopped)
    async def stopped(request: Request, exc: BatcherStopped) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers=retry)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=CLIENT_GONE)

    @app.exception_handler(InferenceFailed)
    async def failed(request: Request, exc: InferenceFailed) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


class CatchAll:
    """ASGI middleware: an unexpected exception is logged with its traceback and answered as a JSON 500 (not
    Starlette's plain-text page), and the service goes on."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = JSONResponse({"error": "unexpected error in the service (logged)"}, status_code=500)
                await response(scope, receive, send)
