"""The garbage collector's pauses: what the service holds from start-up is left out of its full collections.

Python's cyclic garbage collector stops every thread of the process while it runs, and a full (oldest
generation) collection walks every tracked object: with torch imported, about 220,000 of them, which took
190 ms a collection on average, up to 330 ms, on the busy 2-core build machine. Under load such collections
came every 2 seconds, and every request in progress waited: they were most of the service's p99 at 32
clients (README "Load").
Objects that live from start-up to exit (modules, the model, the app) need never be walked: moved to the
collector's permanent generation once the service is ready (`gc.freeze`), a full collection walks only what
was created since, a few milliseconds. What requests create is collected as before (if less often, below).
A frozen object that is dropped later (the start-up model, when a reload swaps in another) is still freed by
reference counting, as long as no reference cycle runs through it (a test holds that for the served model).

Under load the youngest generation was then collected about a hundred times a second, most of the pauses that
remained: it is now collected less often (YOUNG_THRESHOLD).

The pauses themselves are timed (CollectorPauses) and exported with the metrics, so that a stall of this kind
shows in /metrics rather than only in a client's p99.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


# The youngest generation is collected once this many more tracked objects have been allocated than freed
# (Python's default is 700). The requests in progress hold a few thousand between them, so at 700 it ran
# about a hundred times a second under load: 100-150 ms of pauses per 3,200 requests at 32 clients, against
# 0-7 ms at this threshold. Cyclic garbage waits for at most this many objects more: a few megabytes.
YOUNG_THRESHOLD = 10_000


def freeze_startup_objects() -> tuple[int, int, int]:
    """Collect what start-up left behind, exempt everything still alive from later collections, and collect
    the youngest generation less often; return the thresholds to restore."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, previous[1], previous[2])
    logger.debug("%d objects from start-up exempt from garbage collection", gc.get_freeze_count())
    return previous


def unfreeze(previous: tuple[int, int, int]) -> None:
    """At stop: an app run in another process's lifetime (tests) hands its objects back to the collector."""
    gc.set_threshold(*previous)
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
