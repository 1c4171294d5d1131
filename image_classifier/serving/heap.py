"""The garbage collector's pauses: what the service holds from start-up is left out of its full collections.

Python's cyclic garbage collector stops every thread of the process while it runs, and a full (oldest
generation) collection walks every tracked object: with torch imported, about 220,000 of them, which took
100-330 ms a collection on the 2-core build machine. Under load such collections come every few seconds,
and every request in progress waits: they were most of the service's p99 at 32 clients (README "Load").
Objects that live from start-up to exit (modules, the model, the app) need never be walked: moved to the
collector's permanent generation once the service is ready (`gc.freeze`), a full collection walks only what
was created since, a few milliseconds. Nothing changes for what requests create: it is collected as before.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Collect what start-up left behind, then exempt everything still alive from later collections."""
    gc.collect()
    gc.freeze()
    logger.debug("%d objects from start-up exempt from garbage collection", gc.get_freeze_count())


def unfreeze() -> None:
    """At stop: an app run in another process's lifetime (tests) hands its objects back to the collector."""
    gc.unfreeze()
