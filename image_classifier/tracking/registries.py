"""Which registry a command uses: MLflow's when a tracking URI is set, else the registry file. The one
place that knows both backends, so that neither imports the other."""

from __future__ import annotations

from pathlib import Path

from image_classifier.tracking.file_registry import FileRegistry
from image_classifier.tracking.registry import Registry


def open_registry(experiments_folder: Path, tracking_uri: str | None = None) -> Registry:
    """The MLflow registry when a tracking URI is given (MLflow is imported only then), else the file."""
    if tracking_uri:
        from image_classifier.tracking.mlflow_registry import MlflowRegistry

        return MlflowRegistry(experiments_folder, tracking_uri)
    return FileRegistry(experiments_folder)
