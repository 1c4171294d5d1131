"""The one frozen settings object of each command, built once from its parsed arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image_classifier.images import DEFAULT_MAX_PIXELS
from image_classifier.secret import Secret
from image_classifier.serving.model_request import ModelRequest

OUTPUT_FORMATS = ("table", "json", "csv")
# 64 megapixels of declared images per request: 64 one-megapixel photos, or one at the 36 MP limit and more.
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000


@dataclass(frozen=True)
class PredictSettings:
    model: ModelRequest
    images: tuple[Path, ...]
    top_k: int = 3
    output_format: str = "table"
    batch_size: int = 256
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    torch_threads: int | None = None


@dataclass(frozen=True)
class ServeSettings:
    model: ModelRequest
    host: str = "127.0.0.1"
    port: int = 8000
    top_k: int = 3
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_upload_bytes: int = 4 * 1024 * 1024
    max_batch_images: int = 64
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    decode_workers: int = 2
    max_queue: int = 64
    request_timeout: float = 30.0
    reload_every: float | None = None
    allow_class_change: bool = False
    graceful_timeout: float = 30.0
    torch_threads: int = 1
    access_log: bool = False
    workers: int = 1  # processes serving the one port, each with its own model and batcher (supervisor.py)
    # From $SERVE_TOKEN only (never an option, so it stays off the command line); Secret never shows itself.
    token: Secret | None = None
