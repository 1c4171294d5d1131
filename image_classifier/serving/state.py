"""The service's shared state: the served model (and the one a reload replaced), the micro-batcher, the
thread pools, the admission and the metrics; one ServiceState per app, read by the routes and the hot swap.

It lives in a module of its own so that the app factory, the routes and the hot swap all read it, and none of
them imports another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from image_classifier.serving.admission import Admission
from image_classifier.serving.batching import MicroBatcher
from image_classifier.serving.metrics import Metrics
from image_classifier.serving.model_source import ServedModel
from image_classifier.serving.settings import ServeSettings
from image_classifier.serving.uploads import UploadLimits
from image_classifier.serving.workers import DaemonPool

logger = logging.getLogger(__name__)


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
