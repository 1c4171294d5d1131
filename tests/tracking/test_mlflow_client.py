"""Bounded calls to a tracking server (no server needed here: tests/tracking/test_mlflow.py has real ones)."""

import threading
import time

import pytest

from image_classifier.distributed import COLLECTIVE_TIMEOUT
from image_classifier.tracking.mlflow_client import CALL_SECONDS, ENVIRONMENT_DEFAULTS, CallTimedOut, call_within


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
