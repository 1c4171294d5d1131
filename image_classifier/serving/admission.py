"""Admission: how many prediction requests are in progress at once, how long each may take, and the stop.

A prediction request is admitted before its body is read. While `max_in_flight` requests are in progress
(receiving, decoding or waiting for the model), the next one is answered 503 at once, with Retry-After:
backpressure, instead of a queue (and memory) that grows with the load. An admitted request that has no
answer by its deadline is answered 503 too; its remaining work is dropped, as is the work of a client that
has disconnected. Once the service begins to stop, new requests get 503, and the deadlines of those in
progress are brought forward so that each is answered before --graceful_timeout runs out.

The deadline and the disconnection interrupt the request's own task (task.cancel), wherever it waits: for
its body, for a decoding thread, or in the batcher's queue; work not yet started is never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)

# Seconds a client is told to wait before it tries again (Retry-After): enough for a queue of small requests
# to drain, or a restarted process to listen again.
RETRY_AFTER_S = 1
# Of the graceful timeout, this is kept for answering the requests that the stop interrupts.
STOP_MARGIN_S = 1.0


class Unavailable(Exception):
    """Answered 503 with Retry-After: the service is full, stopping, or a request ran past its deadline."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ClientGone(Exception):
    """The client disconnected before its answer was ready: nobody is left to answer."""


class Ticket:
    """One admitted request: its deadline, and what interrupted it (None while nothing has)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop = loop
        self._task = asyncio.current_task()
        self.deadline = deadline
        self.reason: str | None = None
        self._timer = loop.call_at(deadline, self.interrupt, "deadline")
        self._watcher: asyncio.Task | None = None

    def bring_forward(self, deadline: float, reason: str) -> None:
        if deadline < self.deadline and self.reason is None:
            self.deadline = deadline
            self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self.interrupt, reason)

    def interrupt(self, reason: str) -> None:
        if self.reason is None and self._task is not None:
            self.reason = reason
            self._task.cancel()

    def watch_disconnect(self, receive: Callable[[], Awaitable[dict]]) -> None:
        """Interrupt the request when its client disconnects; call once the whole body has been received
        (from then on, the server's receive() only ever answers http.disconnect)."""

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.interrupt("disconnected")

        self._watcher = self._loop.create_task(watch())

    def close(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


class Admission:
    def __init__(self, max_in_flight: int, timeout_s: float, on_drop: Callable[[str], None] | None = None) -> None:
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._on_drop = on_drop
        self._tickets: set[Ticket] = set()
        self._stop_deadline: float | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    @property
    def stopping(self) -> bool:
        return self._stop_deadline is not None

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """The request's work runs inside: Unavailable (or ClientGone) when it is refused or interrupted."""
        if self._stop_deadline is not None:
            self._refuse("stopping", "the service is shutting down")
        if len(self._tickets) >= self._max_in_flight:
            self._refuse("full", f"the service is busy: {self._max_in_flight} requests are in progress (--max_queue)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        if self._stop_deadline is not None:
            deadline = min(deadline, self._stop_deadline)
        ticket = Ticket(loop, deadline)
        self._tickets.add(ticket)
        try:
            yield ticket
        except ClientGone:
            self._count("disconnected")
            raise
        except asyncio.CancelledError:
            if ticket.reason is None:
                raise  # not ours: the server itself cancels the request
            _uncancel()
            if ticket.reason == "disconnected":
                self._count(ticket.reason)
                raise ClientGone("the client disconnected before its answer was ready") from None
            self._count(ticket.reason)
            if ticket.reason == "stopping":
                raise Unavailable("the service is shutting down", "stopping") from None
            raise Unavailable(
                f"no answer within {self._timeout_s:g} s (--request_timeout): try again later", "deadline"
            ) from None
        finally:
            ticket.close()
            self._tickets.discard(ticket)

    def begin_stop(self, graceful_timeout_s: float) -> None:
        """Refuse new requests; answer those in progress before the graceful timeout ends."""
        if self._stop_deadline is not None:
            return
        loop = asyncio.get_running_loop()
        self._stop_deadline = loop.time() + max(0.0, graceful_timeout_s - min(STOP_MARGIN_S, graceful_timeout_s / 4))
        for ticket in self._tickets:
            ticket.bring_forward(self._stop_deadline, "stopping")
        logger.info("stopping: %d requests in progress, refusing new ones", len(self._tickets))

    def _refuse(self, reason: str, message: str) -> None:
        self._count(reason)
        raise Unavailable(message, reason)

    def _count(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)


def _uncancel() -> None:
    """Take back the cancellation that interrupted the task (Python 3.11+ counts them; 3.10 does not)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()
