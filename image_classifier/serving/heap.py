"""The garbage collector's pauses: what the service holds from start-up is left out of its full collections.

Python's cyclic garbage collector stops every thread of the process while it runs, and a full (oldest
generation) collection walks every tracked object: with torch imported, about 220,000 of them, which took
190 ms a collection on average, up to 330 ms, on the busy 2-core build machine. Under load such collections
came every 2 seconds, and every request in progress waited: they were most of the service's p99 at 32
clients (docs/performance.md, "Serving: load").
Objects that live from start-up to exit (modules, the model, the app) need never be walked: moved to the
collector's permanent generation once the service is ready (`gc.freeze`), a full collection walks only what
was created since, a few milliseconds. Nothing changes for what requests create: it is collected as before.
A frozen object that is dropped later (the start-up model, when a reload swaps in another) is still freed by
reference counting, as long as no reference cycle runs through it (a test holds that for the served model).

The youngest generation keeps Python's threshold (700 objects): collected less often (10,000), its pauses under
load fell from 100-150 ms to 0-7 ms per 3,200 requests, but cyclic garbage would then wait for about 14 times
as many objects, and the memory bound (docs/serving.md, "Bounds") counts a request's bytes only while it lives: any
path that leaves them in a reference cycle would hold them that much longer.

The pauses themselves are timed (CollectorPauses) and exported with the metrics, so that a stall of this kind
shows in /metrics rather than only in a client's p99.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Collect what start-up left behind, then exempt everything still alive from later collections."""
    gc.collect()
    gc.freeze()
    logger.debug("%d objects from start-up exempt from garbage collection", gc.get_freeze_count())


def unfreeze() -> None:
    """At stop: an app run in another process's lifetime (tests) hands its objects back to the collector."""
    gc.unfreeze()


class CollectorPauses:
    """Every garbage collection's duration, by generation (0, 1, 2), while started: read at each scrape.

    The callback runs inside the collector, with the GIL held, in whichever thread triggered it: it only
    updates numbers (no lock: the metrics' own locks could be held by that very thread).
    """

    GENERATIONS = 3

    def __init__(self) -> None:
        self.collections = [0] * self.GENERATIONS
        self.seconds = [0.0] * self.GENERATIONS
        self.longest = [0.0] * self.GENERATIONS
        self._began = 0.0

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        seconds = time.perf_counter() - self._began
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += seconds
        self.longest[generation] = max(self.longest[generation], seconds)
