"""The routes, one APIRouter: POST /predict and /predict/batch, GET /health, /ready, /metadata, /metrics.

Every route here but /health needs the bearer token when one is set (auth.py); /docs, its files and
/openapi.json (added by the app) need none: they show what the service takes, nothing that it holds. Every
JSON answer is built from the pydantic model the route declares (schemas.py), so /docs cannot drift from it.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from image_classifier.serving.auth import token_dependency
from image_classifier.serving.batching import MicroBatcher
from image_classifier.serving.error_responses import RETRY_LATER, error_response
from image_classifier.serving.model_source import ServedModel, top_k
from image_classifier.serving.request_bodies import BATCH_BODY, IMAGE_BODY
from image_classifier.serving.schemas import (
    ERROR_RESPONSES,
    INVALID_REQUEST,
    METRICS_ERRORS,
    BatchItem,
    BatchPrediction,
    ClassProbability,
    Health,
    Metadata,
    ModelMetadata,
    ModelSummary,
    Prediction,
    Ready,
)
from image_classifier.serving.state import ServiceState
from image_classifier.serving.uploads import read_images


def build_router(state: ServiceState) -> APIRouter:
    settings = state.settings
    token = token_dependency(settings.token)
    router = APIRouter()
    top_k_query = Query(settings.top_k, ge=1, description="how many classes to return, most probable first")

    @router.get("/health", response_model=Health, summary="liveness: the process answers", tags=["status"])
    async def health() -> JSONResponse:
        return _json(Health(status="ok"))

    @router.get(
        "/ready",
        response_model=Ready,
        summary="readiness: the model is loaded and the inference worker runs",
        tags=["status"],
        dependencies=[token],
        responses=ERROR_RESPONSES,
    )
    async def ready() -> JSONResponse:
        _batcher(state)  # 503 while not loaded, or once the inference worker has died
        if state.admission.stopping:
            return _unavailable("the service is shutting down")
        return _json(Ready(status="ready", sha256=_served(state).info.sha256))

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

    @router.get(
        "/metrics", tags=["status"], dependencies=[token], responses=METRICS_ERRORS, summary="Prometheus metrics"
    )
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.post(
        "/predict",
        response_model=Prediction,
        response_model_by_alias=True,
        dependencies=[token],
        responses={**ERROR_RESPONSES, **INVALID_REQUEST},
        openapi_extra=IMAGE_BODY,
        summary="classify one image: a raw body (image/png, image/jpeg, ...) or a multipart upload",
        tags=["predict"],
    )
    async def predict(request: Request, top_k: int = top_k_query) -> JSONResponse:
        _, probabilities, model = await _predict(state, request, single=True)
        answer = Prediction(predictions=_top(probabilities[0], model, top_k), model=_summary(model))
        return _json(answer)

    @router.post(
        "/predict/batch",
        response_model=BatchPrediction,
        response_model_by_alias=True,
        dependencies=[token],
        responses={**ERROR_RESPONSES, **INVALID_REQUEST},
        openapi_extra=BATCH_BODY,
        summary="classify several images: a multipart upload with one file part per image",
        tags=["predict"],
    )
    async def predict_batch(request: Request, top_k: int = top_k_query) -> JSONResponse:
        names, probabilities, model = await _predict(state, request, single=False)
        results = [
            BatchItem(filename=name, predictions=_top(row, model, top_k)) for name, row in zip(names, probabilities)
        ]
        return _json(BatchPrediction(results=results, model=_summary(model)))

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


def _json(answer: BaseModel) -> JSONResponse:
    """The answer, built from its model, sent as is: FastAPI's re-validation of a returned model against the
    response_model (the schema /docs shows) is a measurable cost per request under load, for a model that
    validated its fields when it was built. Dumped in python mode for the standard json module: the same
    bytes (compact, floats as Python writes them) as ever."""
    return JSONResponse(answer.model_dump(by_alias=True))


def _unavailable(message: str) -> JSONResponse:
    return error_response(message, 503, headers=RETRY_LATER)


def _served(state: ServiceState) -> ServedModel:
    if state.model is None:
        raise StarletteHTTPException(503, "the model is not loaded yet", headers=RETRY_LATER)
    return state.model


def _batcher(state: ServiceState) -> MicroBatcher:
    _served(state)
    if state.batcher is None:
        raise StarletteHTTPException(503, "the model is not loaded yet", headers=RETRY_LATER)
    if state.batcher.failure is not None:
        raise StarletteHTTPException(
            503, f"the inference worker stopped ({state.batcher.failure}): the service is exiting to be restarted"
        )
    return state.batcher


def _top(probabilities, model: ServedModel, k: int) -> list[ClassProbability]:
    return [ClassProbability.model_validate(entry) for entry in top_k(probabilities, model.classes, k)]


def _summary(model: ServedModel) -> ModelSummary:
    info = model.info
    return ModelSummary(sha256=info.sha256, name=info.registry_name, version=info.registry_version, source=info.source)
