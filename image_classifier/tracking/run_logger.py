"""What the trainer logs a run through: MLflow when a tracking URI is set, else nothing at all."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class NoRunLogger:
    """No tracking server: the run folder is the whole record."""

    def start(self, manifest: Mapping) -> None:
        pass

    def log_epoch(self, entry: Mapping) -> None:
        pass

    def log_outputs(self, folder: Path, model_sha256: str | None, exclude: tuple[str, ...] = ()) -> None:
        pass

    def log_file(self, path: Path) -> None:
        pass

    def end(self, status: str) -> None:
        pass

    def record(self) -> dict | None:
        return None


def open_run_logger(tracking_uri: str | None, experiment_name: str, run_name: str, manifest: Mapping):
    """A started run logger for this run; `manifest["mlflow"]` (on --resume) continues the same MLflow run."""
    if not tracking_uri:
        return NoRunLogger()
    # Only now: without a tracking URI nothing MLflow is imported.
    from image_classifier.tracking.mlflow_logger import MlflowRunLogger

    run_logger = MlflowRunLogger(tracking_uri, experiment_name, run_name, manifest.get("mlflow"))
    run_logger.start(manifest)
    return run_logger
