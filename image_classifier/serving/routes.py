"""The routes: POST /predict and /predict/batch, GET /health, /ready, /metadata, /metrics.

Every route here but /health needs the bearer token when one is set; /docs, its files and /openapi.json
(added by the app) need none: they show what the service takes, nothing that it holds.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from image_classifier.serving.admission import RETRY_AFTER_S
from image_classifier.serving.batching import MicroBatcher
from image_classifier.serving.model_source import ServedModel, top_k
from image_classifier.serving.schemas import (
    BATCH_BODY,
    ERROR_RESPONSES,
    IMAGE_BODY,
    BatchPrediction,
    Metadata,
    ModelMetadata,
    Prediction,
)
from image_classifier.serving.uploads import read_images

if TYPE_CHECKING:
    from image_classifier.serving.app import ServiceState


def build_router(state: ServiceState) -> APIRouter:
    settings = state.settings
    token = token_dependency(state)
    router = APIRouter()
    top_k_query = Query(settings.top_k, ge=1, description="how many classes to return, most probable first")

    @router.get("/health", summary="liveness: the process answers", tags=["status"])
    async def health() -> dict:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="readiness: the model is loaded and the inference worker runs",
        tags=["status"],
        dependencies=[token],
        responses=ERROR_RESPONSES,
    )
    async def ready() -> JSONResponse:
        _batcher(state)  # 503 while not loaded, or once the inference worker has died
        if state.admission.stopping:
            return _unavailable("the service is shutting down")
        return JSONResponse({"status": "ready", "sha256": _served(state).info.sha256})

    @router.get("/metadata", response_model=Metadata, tags=["status"], dependencies=[token], responses=ERROR_RESPONSES)
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
            max_request_pixels=settings.max_request_pixels,
            max_queue=settings.max_queue,
            request_timeout=settings.request_timeout,
            decode_workers=settings.decode_workers,
        )

    @router.get("/metrics", tags=["status"], dependencies=[token], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.post(
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
        _, probabilities, model = await _predict(state, request, single=True)
        # A ready response skips FastAPI's re-validation against Prediction (the schema /docs shows): a
        # measurable cost per request under load, for a dict built right here.
        return JSONResponse({"predictions": _top(probabilities[0], model, top_k), "model": _summary(model)})

    @router.post(
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
        names, probabilities, model = await _predict(state, request, single=False)
        results = [
            {"filename": name, "predictions": _top(row, model, top_k)} for name, row in zip(names, probabilities)
        ]
        return JSONResponse({"results": results, "model": _summary(model)})

    return router


async def _predict(state: ServiceState, request: Request, single: bool):
    batcher = _batcher(state)
    async with state.admission.admit() as ticket:
        with batcher.announce():
            # At the served model's size; a reload swapping in another size meanwhile is handled by infer().
            image_size = _served(state).image_size
            images = await read_images(request, state.limits, state.decoders, ticket, single, image_size)
        probabilities, model = await batcher.submit(images.inputs)
    return images.names, probabilities, model


def token_dependency(state: ServiceState):
    token = state.settings.token
    bearer = HTTPBearer(auto_error=False, description="the SERVE_TOKEN the service was started with")
    expected = token.reveal().encode("ascii") if token is not None else None

    # async: a plain def dependency would cost every request a trip through the thread pool.
    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if expected is None:
            return
        # The header's own bytes (Starlette decodes headers as latin-1).
        given = credentials.credentials.encode("latin-1") if credentials is not None else b""
        # compare_digest takes the same time wherever the bytes differ, so timing reveals nothing of the token.
        if not hmac.compare_digest(given, expected):
            raise StarletteHTTPException(
                401, "missing or wrong bearer token (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"}
            )

    return Depends(require_token)


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _served(state: ServiceState) -> ServedModel:
    if state.model is None:
        raise StarletteHTTPException(503, "the model is not loaded yet", headers={"Retry-After": str(RETRY_AFTER_S)})
    return state.model


def _batcher(state: ServiceState) -> MicroBatcher:
    _served(state)
    if state.batcher is None:
        raise StarletteHTTPException(503, "the model is not loaded yet", headers={"Retry-After": str(RETRY_AFTER_S)})
    if state.batcher.failure is not None:
        raise StarletteHTTPException(
            503, f"the inference worker stopped ({state.batcher.failure}): the service is exiting to be restarted"
        )
    return state.batcher


def _top(probabilities, model: ServedModel, k: int) -> list[dict]:
    return top_k(probabilities, model.classes, k)


def _summary(model: ServedModel) -> dict:
    info = model.info
    return {"sha256": info.sha256, "name": info.registry_name, "version": info.registry_version, "source": info.source}
