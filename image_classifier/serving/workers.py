"""Threads for the service's work off the event loop: decoding, the forward pass, loading a model.

They are daemon threads: a stopping service answers what it can within --graceful_timeout and then exits,
whatever a thread is still doing (a reload stuck reading from a dead file system, a slow decode). The
standard library's ThreadPoolExecutor joins its threads at exit, and asyncio.run waits for its default one.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any


class DaemonPool(concurrent.futures.Executor):
    """A fixed number of daemon threads taking work in order; `loop.run_in_executor` accepts it.

    Work that is cancelled before a thread takes it (its asyncio caller gave up) is skipped, never run.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}_{index}", daemon=True) for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("the pool is shut down")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the caller, like ThreadPoolExecutor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs  # the work's data (request bytes, images) is not kept until the next item
