"""Hot swap: re-resolve a models:/NAME@ALIAS model (SIGHUP, --reload_every) and serve the new version once it
has loaded and passed its checks.

A candidate is loaded in a daemon thread of its own, next to the serving model, and checked like the first
(sha256, one output per class, finite outputs); then one reference is swapped on the event loop: a batch
already running finishes with the old model, the next one uses the new. A version whose classes differ from
the served ones (in order or in count) would silently change what every label means to the clients: it is
refused unless the service was started with --allow_class_change. Whatever is refused or fails leaves the
old model serving, with an ERROR log line and model_reloads_total{result="failed"|"refused"}.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from image_classifier.errors import UserError
from image_classifier.serving.model_source import load_model

if TYPE_CHECKING:
    from image_classifier.serving.state import ServiceState

logger = logging.getLogger(__name__)


async def reload_model(state: ServiceState, reason: str) -> None:
    """Re-resolve the model; swap in a new version once it has loaded and passed its checks."""
    async with state.reload_lock:
        current = state.model
        # Periodic checks would fill the log: only a signal's reload is shown (-v shows them all).
        log = logger.info if "SIGHUP" in reason else logger.debug
        log("reload (%s): resolving %s", reason, state.settings.model.model)
        try:
            loop = asyncio.get_running_loop()
            candidate = await loop.run_in_executor(state.loader, load_model, state.settings.model)
        except UserError as exc:
            state.metrics.reloads.labels("failed").inc()
            logger.error("reload (%s) failed, still serving sha256 %s: %s", reason, current.info.sha256[:12], exc)
            return
        except Exception:
            state.metrics.reloads.labels("failed").inc()
            logger.exception("reload (%s) failed, still serving sha256 %s", reason, current.info.sha256[:12])
            return
        if (
            candidate.info.sha256 == current.info.sha256
            and candidate.info.registry_version == current.info.registry_version
        ):
            state.metrics.reloads.labels("unchanged").inc()
            log(
                "reload (%s): %s is still version %s", reason, state.settings.model.model, current.info.registry_version
            )
            return
        if candidate.classes != current.classes and not state.settings.allow_class_change:
            state.metrics.reloads.labels("refused").inc()
            logger.error(
                "reload (%s) refused, still serving version %s: version %s has other classes (%s) than the served "
                "ones (%s), in order or in number; restart with --allow_class_change to serve it anyway",
                reason,
                current.info.registry_version,
                candidate.info.registry_version,
                ", ".join(candidate.classes),
                ", ".join(current.classes),
            )
            return
        # Kept only when the input size changes: otherwise the new model answers every request.
        state.previous_model = current if current.image_size != candidate.image_size else None
        state.model = candidate
        state.metrics.reloads.labels("swapped").inc()
        logger.info(
            "reload (%s): now serving %s version %s (sha256 %s), was version %s",
            reason,
            state.settings.model.model,
            candidate.info.registry_version,
            candidate.info.sha256[:12],
            current.info.registry_version,
        )


async def on_sighup(state: ServiceState, reloadable: bool, reason: str = "SIGHUP") -> None:
    if reloadable:
        await reload_model(state, reason)
    else:
        logger.info(
            "%s: %s is not a models:/NAME@ALIAS model, so there is nothing to re-resolve",
            reason,
            state.settings.model.model,
        )


async def reload_every(state: ServiceState) -> None:
    while True:
        await asyncio.sleep(state.settings.reload_every)
        await reload_model(state, f"every {state.settings.reload_every:g} s")
