"""The one place that imports MLflow and makes its client, with bounded network waits.

MLflow is imported here only, and only when a tracking URI is set: the embedded default (run folders and
registry.json) needs no MLflow at all. It comes with the `image-classifier[mlflow]` extra (mlflow-skinny,
the client; also in the prod lock so the Docker image can log to a server).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from image_classifier.errors import UserError
from image_classifier.tracking.uri import misread_credentials, redacted, without_credentials

# MLflow's own defaults wait 120 s per request and retry 7 times with growing pauses: a dead server would
# stall a run for many minutes. These bound one failing request to under a minute (15 s x 3 tries, pauses of
# 0 and 2 s plus up to 1 s of jitter each); a value already set in the environment wins.
ENVIRONMENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # A busy server's 429 or 503 carries Retry-After, which urllib3 obeys however long it says (an hour):
    # our own short pauses are used instead.
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no progress bars through our log lines
    # MLflow prints "View run ... at <server URL>" to stdout when a run ends: noise in our output, and the
    # URL could carry credentials.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow sets up its own log handler; only its problems matter here
}
# The most one call of the trainer to the server (start the run, log an epoch, upload a file: each a few
# requests) may hold training, whatever the server does (hangs, answers a byte at a time, asks to retry in an
# hour) and whatever MLflow's settings say. Under torchrun the other ranks wait for rank 0 meanwhile, so it
# must stay well below the collective timeout (image_classifier.distributed.COLLECTIVE_TIMEOUT, 10 minutes).
CALL_SECONDS = 60.0
_REASON_LENGTH = 300
_NETWORK_FAILURE = re.compile(
    r"\[Errno -?\d+\][^'\")]*|Read timed out[^'\")]*|Connection aborted[^'\")]*|RemoteDisconnected[^'\")]*"
)


def connect(tracking_uri: str):
    """An `MlflowClient` for tracking and for the model registry at `tracking_uri`."""
    misread = misread_credentials(tracking_uri)
    if misread:  # refused before any request: the client would send part of the password elsewhere
        raise UserError(f"cannot use the tracking URI {redacted(tracking_uri)}: {misread}")
    for name, value in ENVIRONMENT_DEFAULTS.items():
        if not os.environ.get(name):  # set and empty counts as unset (MLflow itself would fail on it)
            os.environ[name] = value
    # urllib3 warns at every retry; the callers report a failed call once, in their own words.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise UserError(
            "a tracking URI is set, but MLflow is not installed: pip install 'image-classifier[mlflow]', "
            "or unset MLFLOW_TRACKING_URI"
        ) from None
    try:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except Exception as exc:  # an unsupported scheme or a malformed URI: MLflow's message quotes it whole
        raise UserError(
            f"cannot use the tracking URI {redacted(tracking_uri)}: {short_reason(exc, tracking_uri)}"
        ) from None


_Result = TypeVar("_Result")


class CallTimedOut(Exception):
    """A call to the server was given up after its deadline (it may still finish in the background)."""


def call_within(seconds: float, action: Callable[[], _Result]) -> _Result:
    """`action()`'s result, or CallTimedOut once `seconds` have passed.

    The call runs in a daemon thread, which is left behind when it overruns: a socket wait cannot be
    interrupted from outside, and a daemon thread never keeps the process from exiting.
    """
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = action()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="mlflow-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CallTimedOut(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def short_reason(exc: BaseException, tracking_uri: str) -> str:
    """One line about a failed MLflow call, without the credentials a tracking URI may carry."""
    lines = str(exc).strip().splitlines()
    text = (lines[0] if lines else "") or type(exc).__name__
    network = _NETWORK_FAILURE.search(text)
    if network:  # urllib3's message is a page long; its cause is what a user needs
        text = f"no answer from the server ({network[0].strip(chr(39) + chr(34) + '()')})"
    text = without_credentials(text, tracking_uri)  # before shortening, which could cut a password in two
    return text if len(text) <= _REASON_LENGTH else text[: _REASON_LENGTH - 3] + "..."


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code (RESOURCE_DOES_NOT_EXIST, ...) of a failed call, if the server answered."""
    return getattr(exc, "error_code", None)
