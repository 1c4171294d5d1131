"""Stopping a run cleanly on Ctrl-C or SIGTERM: the signal becomes a request the trainer honours between steps."""

from __future__ import annotations

import logging
import signal

logger = logging.getLogger(__name__)


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a request honoured between steps, so no checkpoint is torn.

    Not under torchrun (`enabled=False`): ranks stopping at different steps would wait for each other
    forever; there the signal ends the process and `--resume` continues from the last checkpoint.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.received: int | None = None
        self._previous: dict = {}
        self._enabled = enabled

    def __enter__(self) -> StopSignals:
        if not self._enabled:
            return self
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (e.g. some notebook front-ends): keep the default handlers
            self._previous = {}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signal_number: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.received = signal_number
        logger.warning("%s received: stopping after this step", signal.Signals(signal_number).name)
