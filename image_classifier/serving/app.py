"""The HTTP service: `create_app(settings) -> FastAPI`.

Routes: POST /predict (one image), POST /predict/batch (several), GET /health, /ready, /metadata, /metrics,
/docs and /openapi.json. Every route but /health needs the bearer token when one is set. Every error is a
JSON object {"error": "..."} with a 4xx (or 503) status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from image_classifier import __version__
from image_classifier.errors import ImageError, UserError
from image_classifier.images import convert_image, open_image
from image_classifier.serving import registry_client
from image_classifier.serving.batching import BatcherStopped, MicroBatcher
from image_classifier.serving.model_source import ServedModel, load_model, top_k
from image_classifier.serving.settings import ServeSettings

logger = logging.getLogger(__name__)

# Raw bodies are accepted with these types; the bytes decide the format (PNG, JPEG, ...), not the header.
RAW_IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/gif", "image/webp"}
    | {"application/octet-stream"}
)
MULTIPART = "multipart/form-data"
# Up to this many declared pixels per request (a 128 x 128 image, or 16 CIFAR-size ones), decoding on the
# event loop takes well under a millisecond; larger images are decoded in a worker thread.
INLINE_DECODE_PIXELS = 128 * 128
ROUTES = ("/predict", "/predict/batch", "/health", "/ready", "/metadata", "/metrics", "/docs", "/openapi.json")


# --- response schemas (what /docs shows) -----------------------------------------------------------------


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_name: str = Field(alias="class", description="class name")
    label: int = Field(description="the class's index in label order")
    probability: float


class ModelSummary(BaseModel):
    sha256: str
    name: str | None = Field(None, description="registered model name, for models:/ sources")
    version: int | None = Field(None, description="registered version, for models:/ sources")
    source: str


class Prediction(BaseModel):
    predictions: list[ClassProbability] = Field(description="top-k classes, most probable first")
    model: ModelSummary


class BatchItem(BaseModel):
    filename: str | None
    predictions: list[ClassProbability]


class BatchPrediction(BaseModel):
    results: list[BatchItem] = Field(description="one per uploaded image, in upload order")
    model: ModelSummary


class ModelMetadata(BaseModel):
    source: str
    model_path: str
    sha256: str
    architecture: str = Field(description="net (the notebook's CNN) or a torchvision model's name")
    image_size: int = Field(description="images are converted to image_size x image_size pixels")
    mean: list[float] = Field(description="per-channel (R, G, B) normalisation mean, of pixels scaled to [0, 1]")
    std: list[float] = Field(description="per-channel (R, G, B) normalisation standard deviation")
    classes: list[str]
    registry_name: str | None
    registry_version: int | None
    aliases: list[str]
    source_run: str | None
    registered_at: str | None
    test_accuracy: float | None
    class_accuracy: dict[str, float | None] | None


class Metadata(BaseModel):
    model: ModelMetadata
    top_k: int
    max_batch_size: int
    max_wait_ms: float
    max_upload_bytes: int
    max_batch_images: int
    max_image_pixels: int


class ErrorBody(BaseModel):
    error: str


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "not an image, empty, truncated or corrupt"),
        (401, "missing or wrong bearer token"),
        (413, "upload, batch or declared image size over the limit"),
        (415, "wrong content type or image format"),
        (503, "model not loaded, or shutting down"),
    )
}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in sorted(RAW_IMAGE_TYPES)},
            MULTIPART: {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


# --- the service's state ---------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of their own, so two apps in one process do not collide."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        prefix = "image_classifier_"
        self.requests = Counter(prefix + "requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.errors = Counter(
            prefix + "errors_total", "requests answered 4xx/5xx", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            prefix + "request_duration_seconds",
            "time from request to response",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram(
            prefix + "batch_size", "images per forward pass", buckets=sizes, registry=self.registry
        )
        self.images = Counter(prefix + "images_predicted_total", "images classified", registry=self.registry)
        self.reloads = Counter(
            prefix + "model_reloads_total", "model re-resolutions", ["result"], registry=self.registry
        )
        self.model = Gauge(
            prefix + "model_info", "the model being served (1)", ["sha256", "name", "version"], registry=self.registry
        )

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def serving(self, model: ServedModel) -> None:
        self.model.clear()
        info = model.info
        self.model.labels(info.sha256, info.registry_name or "", str(info.registry_version or "")).set(1)


@dataclass
class ServiceState:
    settings: ServeSettings
    metrics: Metrics
    model: ServedModel | None = None
    # The model a reload replaced: requests decoded for it just before the swap are still answered by it.
    previous_model: ServedModel | None = None
    batcher: MicroBatcher | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set = field(default_factory=set)  # the event loop keeps only weak references to tasks

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, ServedModel]:
        """Runs in the inference thread; one model for the whole batch, even if a reload swaps it meanwhile.

        The images were decoded at the input size of the model served then: after a swap to a model of another
        size, those few requests are answered by the model they were decoded for.
        """
        model = self.model
        if images.shape[-1] != model.image_size and self.previous_model is not None:
            if images.shape[-1] == self.previous_model.image_size:
                model = self.previous_model
        return model.probabilities(images), model


# --- middleware ------------------------------------------------------------------------------------------


class UploadTooLarge(ImageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload too large: the limit is {limit:,} bytes (--max_upload_bytes)", status=413)


class UploadLimit:
    """Refuse a body over the limit: at once from Content-Length, else as soon as the bytes pass it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"error": str(UploadTooLarge(self.max_bytes))}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Count every response by route and status, and time it."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()


# --- the app ---------------------------------------------------------------------------------------------


def create_app(settings: ServeSettings, model: ServedModel | None = None) -> FastAPI:
    """The service; `model` is loaded from `settings.model` at startup unless given already loaded."""
    state = ServiceState(settings=settings, metrics=Metrics(settings.max_batch_size), model=model)
    app = FastAPI(
        title="image-classifier",
        version=__version__,
        summary="image classifier predictions (the CIFAR-10 tutorial CNN, or a torchvision model)",
        lifespan=_lifespan(state),
        docs_url=None,  # served below, behind the token like every route but /health
        openapi_url=None,
    )
    app.state.service = state
    _add_error_handlers(app)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    _add_routes(app, state, _token_dependency(settings))
    return app


def _lifespan(state: ServiceState):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = state.settings
        if state.model is None:
            state.model = await asyncio.to_thread(load_model, settings.model)
        state.metrics.serving(state.model)
        state.batcher = MicroBatcher(
            state.infer, settings.max_batch_size, settings.max_wait_ms, state.metrics.observe_batch
        )
        state.batcher.start()
        loop = asyncio.get_running_loop()
        reloadable = registry_client.is_alias_uri(settings.model.model)
        # Signal handlers belong to the main thread (not so under TestClient). SIGHUP is handled even when there
        # is nothing to re-resolve: its default action would kill the service.
        on_signal = threading.current_thread() is threading.main_thread()
        if on_signal:
            loop.add_signal_handler(
                signal.SIGHUP, lambda: _keep(state, loop.create_task(_on_sighup(state, reloadable)))
            )
        periodic = loop.create_task(_reload_every(state)) if reloadable and settings.reload_every else None
        logger.info("serving %s (sha256 %s)", settings.model.model, state.model.info.sha256[:12])
        try:
            yield
        finally:
            if on_signal:
                loop.remove_signal_handler(signal.SIGHUP)
            if periodic is not None:
                periodic.cancel()
            await state.batcher.stop()
            logger.info("stopped")

    return lifespan


async def reload_model(state: ServiceState, reason: str) -> None:
    """Re-resolve the model; swap in a new version once it has loaded and passed its checks.

    Requests in flight keep the model their batch started with; a version that fails to load leaves the
    current one serving.
    """
    async with state.reload_lock:
        current = state.model
        try:
            candidate = await asyncio.to_thread(load_model, state.settings.model)
        except UserError as exc:
            state.metrics.reloads.labels("failed").inc()
            logger.error("reload (%s) failed, still serving sha256 %s: %s", reason, current.info.sha256[:12], exc)
            return
        except Exception:
            state.metrics.reloads.labels("failed").inc()
            logger.exception("reload (%s) failed, still serving sha256 %s", reason, current.info.sha256[:12])
            return
        if (
            candidate.info.sha256 == current.info.sha256
            and candidate.info.registry_version == current.info.registry_version
        ):
            state.metrics.reloads.labels("unchanged").inc()
            # Periodic checks that find nothing new would fill the log: only a signal's answer is shown.
            log = logger.info if reason == "SIGHUP" else logger.debug
            log(
                "reload (%s): %s is still version %s", reason, state.settings.model.model, current.info.registry_version
            )
            return
        # Kept only when the input size changes: otherwise the new model answers every request.
        state.previous_model = current if current.image_size != candidate.image_size else None
        state.model = candidate
        state.metrics.serving(candidate)
        state.metrics.reloads.labels("swapped").inc()
        logger.info(
            "reload (%s): now serving %s version %s (sha256 %s), was version %s",
            reason,
            state.settings.model.model,
            candidate.info.registry_version,
            candidate.info.sha256[:12],
            current.info.registry_version,
        )


def _keep(state: ServiceState, task: asyncio.Task) -> None:
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


async def _on_sighup(state: ServiceState, reloadable: bool) -> None:
    if reloadable:
        await reload_model(state, "SIGHUP")
    else:
        logger.info(
            "SIGHUP: %s is not a models:/NAME@ALIAS model, so there is nothing to re-resolve",
            state.settings.model.model,
        )


async def _reload_every(state: ServiceState) -> None:
    while True:
        await asyncio.sleep(state.settings.reload_every)
        await reload_model(state, f"every {state.settings.reload_every:g} s")


def _token_dependency(settings: ServeSettings):
    bearer = HTTPBearer(auto_error=False, description="the SERVE_TOKEN the service was started with")
    expected = settings.token.reveal().encode() if settings.token is not None else None

    # async: a plain def dependency would cost every request a trip through the thread pool.
    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest takes the same time wherever the bytes differ, so timing reveals nothing of the token.
        if not hmac.compare_digest(given, expected):
            raise StarletteHTTPException(
                401, "missing or wrong bearer token (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"}
            )

    return Depends(require_token)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImageError)
    async def image_error(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(BatcherStopped)
    async def stopping(request: Request, exc: BatcherStopped) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


def _add_routes(app: FastAPI, state: ServiceState, token) -> None:
    settings = state.settings
    top_k_query = Query(settings.top_k, ge=1, description="how many classes to return, most probable first")

    @app.get("/health", summary="liveness: the process answers", tags=["status"])
    async def health() -> dict:
        return {"status": "ok"}

    @app.get(
        "/ready",
        summary="readiness: the model is loaded",
        tags=["status"],
        dependencies=[token],
        responses=ERROR_RESPONSES,
    )
    async def ready() -> JSONResponse:
        if state.model is None or state.batcher is None:
            return JSONResponse({"error": "the model is not loaded yet"}, status_code=503)
        return JSONResponse({"status": "ready", "sha256": state.model.info.sha256})

    @app.get("/metadata", response_model=Metadata, tags=["status"], dependencies=[token], responses=ERROR_RESPONSES)
    async def metadata() -> Metadata:
        info = _served(state).info
        return Metadata(
            model=ModelMetadata(
                source=info.source,
                model_path=info.model_path,
                sha256=info.sha256,
                architecture=info.spec.architecture,
                image_size=info.spec.image_size,
                mean=list(info.spec.mean),
                std=list(info.spec.std),
                classes=list(info.classes),
                registry_name=info.registry_name,
                registry_version=info.registry_version,
                aliases=list(info.aliases),
                source_run=info.source_run,
                registered_at=info.registered_at,
                test_accuracy=info.test_accuracy,
                class_accuracy=info.class_accuracy,
            ),
            top_k=settings.top_k,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_upload_bytes=settings.max_upload_bytes,
            max_batch_images=settings.max_batch_images,
            max_image_pixels=settings.max_image_pixels,
        )

    @app.get("/metrics", tags=["status"], dependencies=[token], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/predict",
        response_model=Prediction,
        response_model_by_alias=True,
        dependencies=[token],
        responses=ERROR_RESPONSES,
        openapi_extra=IMAGE_BODY,
        summary="classify one image: a raw body (image/png, image/jpeg, ...) or a multipart upload",
        tags=["predict"],
    )
    async def predict(request: Request, top_k: int = top_k_query) -> JSONResponse:
        batcher = _batcher(state)
        with batcher.announce():
            uploads = await _read_uploads(request, settings, single=True)
            images = await _decode_all(uploads, settings.max_image_pixels, _served(state).image_size)
        probabilities, model = await batcher.submit(images)
        # A ready response skips FastAPI's re-validation against Prediction (the schema /docs shows): a
        # measurable cost per request under load, for a dict built right here.
        return JSONResponse({"predictions": _top(probabilities[0], model, top_k), "model": _summary(model)})

    @app.post(
        "/predict/batch",
        response_model=BatchPrediction,
        response_model_by_alias=True,
        dependencies=[token],
        responses=ERROR_RESPONSES,
        openapi_extra=BATCH_BODY,
        summary="classify several images: a multipart upload with one file part per image",
        tags=["predict"],
    )
    async def predict_batch(request: Request, top_k: int = top_k_query) -> JSONResponse:
        batcher = _batcher(state)
        with batcher.announce():
            uploads = await _read_uploads(request, settings, single=False)
            images = await _decode_all(uploads, settings.max_image_pixels, _served(state).image_size)
        probabilities, model = await batcher.submit(images)
        results = [
            {"filename": name, "predictions": _top(row, model, top_k)} for (name, _), row in zip(uploads, probabilities)
        ]
        return JSONResponse({"results": results, "model": _summary(model)})

    @app.get("/openapi.json", include_in_schema=False, dependencies=[token])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[token])
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="image-classifier - docs")


def _served(state: ServiceState) -> ServedModel:
    if state.model is None:
        raise StarletteHTTPException(503, "the model is not loaded yet")
    return state.model


def _batcher(state: ServiceState) -> MicroBatcher:
    if state.batcher is None:
        raise StarletteHTTPException(503, "the model is not loaded yet")
    return state.batcher


async def _read_uploads(request: Request, settings: ServeSettings, single: bool) -> list[tuple[str | None, bytes]]:
    """(filename, bytes) per image: the raw body, or the file parts of a multipart form."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == MULTIPART:
        uploads = await _multipart_files(request)
    elif content_type in RAW_IMAGE_TYPES and single:
        uploads = [(None, await request.body())]
    else:
        accepted = f"{MULTIPART} or an image type ({', '.join(sorted(RAW_IMAGE_TYPES))})" if single else MULTIPART
        raise ImageError(f"unsupported content type {content_type or '(none)'!r}: send {accepted}", status=415)
    if not uploads:
        raise ImageError("no image in the request: send a file part (multipart) or the image as the body")
    if single and len(uploads) > 1:
        raise ImageError(f"{len(uploads)} images sent to /predict, which takes one: use /predict/batch")
    if len(uploads) > settings.max_batch_images:
        raise ImageError(
            f"too many images: {len(uploads)} in one request, the limit is {settings.max_batch_images} "
            f"(--max_batch_images)",
            status=413,
        )
    return uploads


async def _multipart_files(request: Request) -> list[tuple[str | None, bytes]]:
    try:
        form = await request.form()
    except StarletteHTTPException as exc:  # malformed multipart, or over Starlette's own part limits
        raise ImageError(f"malformed multipart body: {exc.detail}") from None
    try:
        files = [value for _, value in form.multi_items() if not isinstance(value, str)]
        return [(upload.filename, await upload.read()) for upload in files]
    finally:
        await form.close()


async def _decode_all(uploads: list[tuple[str | None, bytes]], max_pixels: int, image_size: int) -> np.ndarray:
    """Headers are read on the event loop (cheap); pixels are decoded there too when the images are small,
    since a thread hop costs more than decoding a few thousand pixels, and in a worker thread otherwise."""
    opened = [_labelled(open_image, uploads, index, payload, max_pixels) for index, (_, payload) in enumerate(uploads)]
    if sum(image.width * image.height for image in opened) <= INLINE_DECODE_PIXELS:
        return _convert_all(opened, uploads, image_size)
    return await run_in_threadpool(_convert_all, opened, uploads, image_size)


def _convert_all(opened: list, uploads: list[tuple[str | None, bytes]], image_size: int) -> np.ndarray:
    return np.stack([_labelled(convert_image, uploads, index, image, image_size) for index, image in enumerate(opened)])


def _labelled(step, uploads: list[tuple[str | None, bytes]], index: int, *args):
    """Run one decoding step; in a batch, an error names the image it is about."""
    try:
        return step(*args)
    except ImageError as exc:
        if len(uploads) == 1:
            raise
        name = uploads[index][0] or "unnamed"
        raise ImageError(f"image {index + 1} ({name}): {exc}", status=exc.status) from None


def _top(probabilities: np.ndarray, model: ServedModel, k: int) -> list[dict]:
    return top_k(probabilities, model.classes, k)


def _summary(model: ServedModel) -> dict:
    info = model.info
    return {"sha256": info.sha256, "name": info.registry_name, "version": info.registry_version, "source": info.source}
