"""The service's responses, as /docs shows them (pydantic models), and the errors each route may answer.

The routes build every JSON answer from these models (routes.py, error_responses.py), so what /docs and
/openapi.json show is what the service sends; tests/serving/test_schemas.py checks each route's answers
against the schema the app declares.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    status: str = Field(description='always "ok": the process answers')


class Ready(BaseModel):
    status: str = Field(description='"ready": the model is loaded and the inference worker runs')
    sha256: str = Field(description="sha256 of the served model.pth")


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
    max_request_pixels: int
    max_queue: int
    request_timeout: float
    decode_workers: int


class ErrorBody(BaseModel):
    error: str


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "not an image, empty, truncated or corrupt"),
        (401, "missing or wrong bearer token"),
        (413, "upload, batch, declared image size or pixels per request over the limit"),
        (415, "wrong content type or image format"),
        (500, "an unexpected error (logged with its traceback)"),
        (503, "model not loaded, busy (--max_queue), past --request_timeout, or shutting down; see Retry-After"),
    )
}
# FastAPI would document its own 422 body ({"detail": [...]}) for a route with parameters: the service answers
# an invalid request as every other error (error_responses.py), and its docs say so.
INVALID_REQUEST = {422: {"model": ErrorBody, "description": "invalid parameters (top_k below 1, not a number)"}}
# /metrics needs only the token: it answers before the model has loaded.
METRICS_ERRORS = {status: ERROR_RESPONSES[status] for status in (401, 500)}
