"""Server-side micro-batching: concurrent requests share one forward pass, run off the event loop.

Requests put (images, future) on an asyncio.Queue (its length is bounded by admission: --max_queue). One
worker task takes the first, then whatever is already queued, up to `max_batch_size` images; it holds the
batch open for up to `max_wait_ms` only while more requests are known to be on their way (announced: still
reading or decoding), so a lone request never waits for company. A request whose client has gone (its future
cancelled) is dropped before the forward pass. The forward pass runs in one dedicated thread: the event loop
keeps accepting and decoding while the model computes, and what arrives meanwhile forms the next batch.

A request of more than `max_batch_size` images is a batch of its own, which `infer` computes in forward
passes of at most `max_batch_size` images with one model: all images of one request are answered by the same
model even when a reload swaps it in between.

If the worker itself dies (not a failed forward pass, which fails only its batch: a bug, or an error that is
not an Exception), every waiting request is answered with BatcherStopped, `failure` says why, and
`on_death` is called: the service reports not ready and exits so that its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from image_classifier.serving.workers import DaemonPool

logger = logging.getLogger(__name__)

# Computes class probabilities (N x classes) for N images (N x 3 x S x S), and says which model did.
Infer = Callable[[np.ndarray], tuple[np.ndarray, Any]]


class BatcherStopped(RuntimeError):
    """The batcher is shutting down, or its worker died, and takes no new work."""


class InferenceFailed(RuntimeError):
    """The forward pass of this request's batch raised; the batcher logged the traceback."""


class MicroBatcher:
    def __init__(
        self,
        infer: Infer,
        max_batch_size: int,
        max_wait_ms: float,
        on_death: Callable[[str], None] | None = None,
    ) -> None:
        self._infer = infer
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._on_death = on_death
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._announced = 0
        self._thread = DaemonPool(1, "inference")
        self._worker: asyncio.Task | None = None
        self._stopping = False
        self.failure: str | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")
        self._worker.add_done_callback(self._worker_ended)

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, answer what is queued (for up to `timeout` seconds), then stop the worker."""
        self._stopping = True
        if self.failure is None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except asyncio.TimeoutError:
                logger.warning("stopping with %d requests unanswered: the timeout ran out", self._queue.qsize())
        if self._worker is not None and not self._worker.done():  # a dead one told _worker_ended why
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._fail_queued(BatcherStopped("the service is shutting down"))
        self._thread.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """Wrap a request's work before `submit` (reading, decoding): an open batch waits for it."""
        self._announced += 1
        try:
            yield
        finally:
            self._announced -= 1

    async def submit(self, images: np.ndarray) -> tuple[np.ndarray, Any]:
        """Probabilities for `images` (N x 3 x S x S uint8), and the model that computed them."""
        if self.failure is not None:
            raise BatcherStopped(f"the inference worker stopped ({self.failure})")
        if self._stopping:
            raise BatcherStopped("the service is shutting down")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((images, future))
        return await future

    def _worker_ended(self, task: asyncio.Task) -> None:
        if task.cancelled() and self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        self.failure = f"{type(error).__name__}: {error}" if error is not None else "it was cancelled"
        logger.critical("the inference worker died (%s)", self.failure, exc_info=error)
        self._fail_queued(BatcherStopped(f"the inference worker stopped ({self.failure})"))
        if self._on_death is not None:
            self._on_death(self.failure)

    def _fail_queued(self, error: Exception) -> None:
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(error)
            self._queue.task_done()

    async def _work(self) -> None:
        held = None  # a request that did not fit into the previous batch starts the next one
        while True:
            batch = [held if held is not None else await self._queue.get()]
            held = None
            try:
                held = await self._fill(batch)
                await self._run([(images, future) for images, future in batch if not future.done()])
            except BaseException as exc:  # the worker ends: nobody will answer these
                stopped = BatcherStopped(f"the inference worker stopped ({type(exc).__name__})")
                for _, future in batch + ([held] if held is not None else []):
                    if not future.done():
                        future.set_exception(stopped)
                raise
            finally:
                for _ in range(len(batch)):
                    self._queue.task_done()
                # Not kept while waiting for the next request: its images, its answers and, through them, the
                # model that computed them (a model a reload swapped out would live on until the next batch).
                batch = None

    async def _fill(self, batch: list[tuple[np.ndarray, asyncio.Future]]):
        """Add queued (and, while some are announced, arriving) requests; return one that did not fit."""
        size = len(batch[0][0])
        deadline = time.monotonic() + self._max_wait_s
        while size < self._max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if self._announced == 0 or remaining <= 0:
                    return None
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    return None
            else:
                item = self._queue.get_nowait()
            if item[1].done():  # its client went away, or its deadline passed, while it was queued
                batch.append(item)  # counted as done with the batch; never computed
                continue
            # Images decoded for a model of another input size (a reload swapped it meanwhile) go in a batch
            # of their own.
            if size + len(item[0]) > self._max_batch_size or item[0].shape[1:] != batch[0][0].shape[1:]:
                return item
            batch.append(item)
            size += len(item[0])
        return None

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        if not batch:
            return
        sizes = [len(images) for images, _ in batch]
        stacked = np.concatenate([images for images, _ in batch])
        try:
            probabilities, model = await asyncio.get_running_loop().run_in_executor(self._thread, self._infer, stacked)
        except Exception:  # one failure answers every request of the batch, and the worker lives on
            logger.exception("a batch of %d images failed", len(stacked))
            for _, future in batch:
                if not future.done():
                    future.set_exception(InferenceFailed("the model failed on this request's batch (see the log)"))
            return
        start = 0
        for (_, future), size in zip(batch, sizes):
            if not future.done():  # the client may have gone away meanwhile
                future.set_result((probabilities[start : start + size], model))
            start += size
