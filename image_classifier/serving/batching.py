"""Server-side micro-batching: concurrent requests share one forward pass, run off the event loop.

Requests put (images, future) on an asyncio.Queue. One worker task takes the first, then whatever is already
queued, up to `max_batch_size` images; it holds the batch open for up to `max_wait_ms` only while more
requests are known to be on their way (announced: still reading or decoding), so a lone request never waits
for company. The forward pass runs in one dedicated thread: the event loop keeps accepting and decoding while
the model computes, and what arrives meanwhile forms the next batch.

All images of one request go through the same forward pass, so they are answered by the same model even
when a reload swaps it in between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Computes class probabilities (N x classes) for N images (N x 3 x S x S), and says which model did.
Infer = Callable[[np.ndarray], tuple[np.ndarray, Any]]


class BatcherStopped(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class MicroBatcher:
    def __init__(
        self,
        infer: Infer,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._infer = infer
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._announced = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new work, answer what is queued, then stop the worker and its thread."""
        self._stopping = True
        await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

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
        if self._stopping:
            raise BatcherStopped("the service is shutting down")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((images, future))
        return await future

    async def _work(self) -> None:
        held = None  # a request that did not fit into the previous batch starts the next one
        while True:
            batch = [held if held is not None else await self._queue.get()]
            held = None
            try:
                held = await self._fill(batch)
                await self._run(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

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
            # Images decoded for a model of another input size (a reload swapped it meanwhile) go in a batch
            # of their own.
            if size + len(item[0]) > self._max_batch_size or item[0].shape[1:] != batch[0][0].shape[1:]:
                return item
            batch.append(item)
            size += len(item[0])
        return None

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        sizes = [len(images) for images, _ in batch]
        stacked = np.concatenate([images for images, _ in batch])
        try:
            probabilities, model = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._infer, stacked
            )
        except Exception as exc:  # one failure answers every request of the batch, and the worker lives on
            logger.exception("a batch of %d images failed", len(stacked))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(stacked))
        start = 0
        for (_, future), size in zip(batch, sizes):
            if not future.done():  # the client may have gone away
                future.set_result((probabilities[start : start + size], model))
            start += size
