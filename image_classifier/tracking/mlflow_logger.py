"""Log a training run to an MLflow tracking server, without ever stopping or stalling the training.

The trainer calls `start` once (or again on --resume), `log_epoch` after every evaluation and
`log_outputs` / `end` when the run's files are written. MLflow experiment = experiment name, MLflow run
name = run name, the arguments (never the password: it is not one of them) as parameters, environment
facts and dataset hashes as tags, every epoch's metrics at step = epoch, the run's files as artifacts.

A server that is down, hangs, answers slowly or asks to retry later, or dies mid-run, costs at most
`mlflow_client.CALL_SECONDS` for the call that meets it and one warning line; every later call is skipped
and counted, and the count goes into run.json (`mlflow.lost_calls`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from image_classifier.flatten import leaves
from image_classifier.manifest import ENVIRONMENT_KEYS
from image_classifier.tracking.mlflow_client import CALL_SECONDS, call_within, connect, error_code, short_reason
from image_classifier.tracking.uri import redacted, run_page

logger = logging.getLogger(__name__)

# Sections of run.json that describe the environment; they become tags "<section>.<key>".
TAG_SECTIONS = (*ENVIRONMENT_KEYS, "determinism", "dataset", "model_spec", "pretrained_model")
# Files that are not results: the checkpoint is large and is deleted when the run finishes.
NOT_ARTIFACTS = ("checkpoint.pt",)
MODEL_SHA256_TAG = "model_sha256"
_MAX_TAG_LENGTH = 5000  # MLflow's limit is 8000 characters (5000 on some stores)


def run_tags(manifest: Mapping) -> dict[str, str]:
    """run.json's environment facts and dataset hashes as MLflow tags (string values)."""
    flat = dict(leaves({key: manifest[key] for key in TAG_SECTIONS if key in manifest}))
    return {key: str(value)[:_MAX_TAG_LENGTH] for key, value in flat.items() if value is not None}


def run_params(arguments: Mapping) -> dict[str, str]:
    return {key: str(value) for key, value in arguments.items()}


def epoch_metrics(entry: Mapping) -> dict[str, float]:
    """One metrics.json history entry as MLflow metrics: numbers only, per-class accuracy as
    `class_accuracy.<class>`; None (no test image of a class) and NaN or inf (a diverged loss) are left out."""
    flat = dict(leaves({key: value for key, value in entry.items() if key != "epoch"}))
    return {
        key: float(value)
        for key, value in flat.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


class MlflowRunLogger:
    """One training run's MLflow run. Every method returns normally, whatever the server does, within
    `call_seconds` (None: as long as MLflow's own timeouts let it)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        earlier: Mapping | None = None,
        call_seconds: float | None = CALL_SECONDS,
    ) -> None:
        """`earlier`: the `record()` of the same run before it was stopped (run.json's "mlflow"), on --resume."""
        earlier = earlier or {}
        self.call_seconds = call_seconds
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.run_id: str | None = earlier.get("run_id")  # continue the same MLflow run
        self.experiment_id: str | None = earlier.get("experiment_id")
        self.lost_calls: int = earlier.get("lost_calls") or 0
        self.error: str | None = None
        self._client = None

    # --- what the trainer calls ---

    def start(self, manifest: Mapping) -> None:
        """Create (or, on resume, reopen) the MLflow run with the parameters and tags of `manifest`."""
        self._call("start the run", lambda client: self._start(client, manifest))
        if self.error is None:
            logger.info("logging to MLflow run %s", self._where())

    def _where(self) -> str:
        """The run's id and where to see it: its page on the server, never the URI's credentials."""
        page = run_page(self.tracking_uri, str(self.experiment_id), str(self.run_id))
        return f"{self.run_id}: {page}" if page else f"{self.run_id} (experiment {self.experiment_id})"

    def log_epoch(self, entry: Mapping) -> None:
        metrics = epoch_metrics(entry)
        self._call(f"log epoch {entry.get('epoch')}", lambda client: self._log_metrics(client, metrics, entry["epoch"]))

    def log_outputs(self, folder: Path, model_sha256: str | None, exclude: tuple[str, ...] = ()) -> None:
        """Upload the run's files (all but the checkpoint and `exclude`) as artifacts; tag the run with the
        model's sha256, by which the registry finds the MLflow run of a run folder."""
        self._call("tag the model", lambda client: client.set_tag(self.run_id, MODEL_SHA256_TAG, model_sha256))
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name not in NOT_ARTIFACTS + exclude]
        for path in files:
            self._call(f"upload {path.name}", lambda client, path=path: client.log_artifact(self.run_id, str(path)))

    def log_file(self, path: Path) -> None:
        self._call(f"upload {path.name}", lambda client: client.log_artifact(self.run_id, str(path)))

    def end(self, status: str) -> None:
        """Close the MLflow run: FINISHED, FAILED or KILLED."""
        self._call("end the run", lambda client: client.set_terminated(self.run_id, status))
        if self.error is None and status == "FINISHED":
            logger.info("MLflow run finished with every call logged: %s", self._where())

    def record(self) -> dict:
        """What run.json keeps about the MLflow run (the URI without credentials)."""
        return {
            "tracking_uri": redacted(self.tracking_uri),
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "lost_calls": self.lost_calls,
            "error": self.error,
        }

    # --- the calls ---

    def _call(self, what: str, action: Callable) -> None:
        if self.error is not None:
            self.lost_calls += 1  # the server failed before: do not wait for it again
            return
        try:
            if self._client is None:
                self._client = connect(self.tracking_uri)  # imports MLflow: no network yet
            if self.call_seconds is None:
                action(self._client)
            else:
                call_within(self.call_seconds, lambda: action(self._client))
        except Exception as exc:  # whatever MLflow or the network raises, training goes on
            self.lost_calls += 1
            self.error = f"{what}: {short_reason(exc, self.tracking_uri)}"
            logger.warning(
                "MLflow logging stopped (%s); training goes on and the run folder has every result", self.error
            )

    def _start(self, client, manifest: Mapping) -> None:
        if self.run_id is not None:
            run = client.get_run(self.run_id)
            self.experiment_id = run.info.experiment_id
            client.update_run(self.run_id, status="RUNNING")
            return
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
        else:
            try:
                self.experiment_id = client.create_experiment(self.experiment_name)
            except Exception as exc:  # created meanwhile by a run in parallel
                if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
                self.experiment_id = client.get_experiment_by_name(self.experiment_name).experiment_id
        run = client.create_run(self.experiment_id, run_name=self.run_name, tags=run_tags(manifest))
        self.run_id = run.info.run_id
        self._log_params(client, run_params(manifest.get("arguments", {})))

    def _log_params(self, client, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        client.log_batch(self.run_id, params=[Param(key, value) for key, value in params.items()])

    def _log_metrics(self, client, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(key, value, timestamp, step) for key, value in metrics.items()]
        client.log_batch(self.run_id, metrics=batch)


def log_finished_run(tracking_uri: str, record) -> MlflowRunLogger:
    """Log a completed run folder (a `records.RunRecord`) in one go: for runs trained without MLflow. No
    training waits for it, so its uploads (a large model.pth on a slow link) get MLflow's own timeouts only."""
    run_logger = MlflowRunLogger(tracking_uri, record.experiment, record.run, call_seconds=None)
    run_logger.start(record.manifest)
    for entry in record.history:
        run_logger.log_epoch(entry)
    run_logger.log_outputs(record.folder, record.model_sha256)
    run_logger.end("FINISHED")
    return run_logger
