"""The one place that makes MLflow's client: URIs it refuses, errors that never show credentials, and calls
bounded in time (no server needed here: tests/tracking/test_mlflow.py has real ones)."""

import socket
import threading
import time

import pytest

from image_classifier.distributed import COLLECTIVE_TIMEOUT
from image_classifier.errors import UserError
from image_classifier.tracking.mlflow_client import (
    CALL_SECONDS,
    ENVIRONMENT_DEFAULTS,
    CallTimedOut,
    call_within,
    connect,
    short_reason,
)
from image_classifier.tracking.registries import open_registry

PIECES = ("user-Qa1", "pw-Zk9", "pw-Xy7")


@pytest.mark.parametrize("delimiter", ["/", "?", "#", "\\"])
def test_a_uri_the_http_client_would_misread_is_refused_before_any_request(delimiter, tmp_path):
    """`http://127.0.0.1:PORT/pw@host` has the password `PORT/pw`, but the HTTP client would send
    `/pw@host/api/...` to 127.0.0.1:PORT: nothing may be sent, and the error shows no piece."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        listening.settimeout(1)
        port = listening.getsockname()[1]
        uri = f"http://127.0.0.1:{port}{delimiter}pw-Zk9@mlflow.invalid:5000"
        registry_error = None
        try:
            open_registry(tmp_path, uri).versions()
        except UserError as exc:
            registry_error = str(exc)
        with pytest.raises(socket.timeout):
            listening.accept()  # no connection came
    assert registry_error is not None and "pw-Zk9" not in registry_error and str(port) not in registry_error
    assert "cannot use the tracking URI http://mlflow.invalid:5000" in registry_error


def test_an_unsupported_uri_is_one_error_without_credentials():
    with pytest.raises(UserError) as exc_info:
        connect("weird://user-Qa1:pw-Zk9@mlflow.invalid")
    assert not any(piece in str(exc_info.value) for piece in PIECES)
    assert "cannot use the tracking URI weird://mlflow.invalid" in str(exc_info.value)


def test_short_reason_hides_the_credentials_in_any_spelling():
    uri = "http://user-Qa1:pw-Zk9@pw-Xy7@mlflow.invalid:5000"
    for text in (
        f"API request to {uri}/api/2.0/x failed",
        f"Invalid url: {uri.replace('@pw', '%40pw')}/api",
        "Failed to parse: 'user-Qa1:pw-Zk9' is not a valid host or port",
        repr(uri.encode()),
    ):
        shown = short_reason(Exception(text), uri)
        assert not any(piece in shown for piece in PIECES), shown
    long_text = "x" * 290 + uri  # shortened after hiding: a cut never leaves half a password
    assert not any(piece[:4] in short_reason(Exception(long_text), uri) for piece in PIECES)


def test_a_call_within_its_deadline_returns_or_raises_as_it_would():
    assert call_within(5, lambda: 42) == 42
    with pytest.raises(KeyError, match="missing"):
        call_within(5, lambda: {}["missing"])


def test_a_call_past_its_deadline_is_given_up_and_left_behind():
    release = threading.Event()
    started_at = time.monotonic()
    with pytest.raises(CallTimedOut, match="no answer within 0.5 s"):
        call_within(0.5, lambda: release.wait(600))
    assert time.monotonic() - started_at < 30  # not the 600 s the call would take
    (left,) = [thread for thread in threading.enumerate() if thread.name == "mlflow-call"]
    assert left.daemon  # it can never keep the process from exiting
    release.set()
    left.join(30)


def test_one_call_ends_well_before_the_other_ranks_give_up_on_rank_0():
    # Under torchrun the other ranks wait in a collective while rank 0 talks to the server.
    assert CALL_SECONDS * 5 <= COLLECTIVE_TIMEOUT.total_seconds()


def test_mlflows_own_retries_of_one_request_fit_in_one_call():
    timeout = float(ENVIRONMENT_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    retries = int(ENVIRONMENT_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(ENVIRONMENT_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    # urllib3 pauses 0 s after the first failure, then factor * 2 ** (n - 1), plus up to 1 s of MLflow's jitter.
    pauses = sum(factor * 2 ** (n - 1) if n > 1 else 0 for n in range(1, retries + 1)) + retries
    assert timeout * (retries + 1) + pauses < CALL_SECONDS
    assert ENVIRONMENT_DEFAULTS["MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"] == "false"
