"""Copies of MLflow model versions on this machine: a version's model.pth, with its run's run.json and
metrics.json (the model spec, the classes), in `<experiments_folder>/.mlflow-models/NAME/VERSION/`. Every
download goes to a temporary folder beside its target and is checked before it takes the target's place."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from image_classifier.errors import RegistryError, UserError
from image_classifier.run_dir import METRICS_FILE, MODEL_FILE, RUN_FILE, sha256_of
from image_classifier.tracking.mlflow_client import short_reason
from image_classifier.tracking.registry import MODEL_URI_PREFIX, ModelVersion, check_model_name, is_inside
from image_classifier.tracking.uri import redacted

logger = logging.getLogger(__name__)

DOWNLOAD_FOLDER = ".mlflow-models"  # hidden: listings of the experiments folder skip it
RECORD_FILES = (RUN_FILE, METRICS_FILE)  # downloaded with a version's model.pth, into the same folder


def _folder_name(name: str) -> str:
    """A model name as one folder name: itself when it follows the name rule (all that this package
    registers), else a digest of it, so that no name from a server can lead out of the download folder."""
    try:
        check_model_name(name)
    except UserError:
        return "name-" + hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:16]
    return name


def download_path(experiments_folder: Path, name: str, version: int) -> Path:
    """Where a version's downloaded model.pth lies, its run's JSON files beside it."""
    return experiments_folder / DOWNLOAD_FOLDER / _folder_name(name) / str(version) / MODEL_FILE


def local_copy(version: ModelVersion, source: str, experiments_folder: Path, tracking_uri: str) -> ModelVersion:
    """`version` with a model_path on this machine holding the registered bytes, if MLflow has them."""
    if (
        version.model_path.is_file()
        and is_inside(experiments_folder, version.model_path)
        and sha256_of(version.model_path) == version.sha256
    ):
        return version
    if version.run_dir is not None and version.model_path.is_file():
        logger.warning(
            "%s changed since it was registered; using %s%s/%s from MLflow instead",
            version.model_path,
            MODEL_URI_PREFIX,
            version.name,
            version.version,
        )
    target = download_path(experiments_folder, version.name, version.version)
    if not (target.is_file() and sha256_of(target) == version.sha256):
        _download(version, source, target, tracking_uri)
    # The run's record beside the weights: its model spec says how to build and feed the model, and its
    # model_sha256 is checked against the weights by whoever reads them.
    for name in RECORD_FILES:
        if not (target.parent / name).is_file():
            _download_record(f"{source.rpartition('/')[0]}/{name}", target.parent / name, tracking_uri)
    return replace(version, model_path=target)


def _download_record(source: str, target: Path, tracking_uri: str) -> None:
    """One of the source run's JSON files; a run logged without it (lost calls) is served without it."""
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as folder:
            downloaded = _one_file(source, folder, tracking_uri)
            if downloaded is not None:
                shutil.move(downloaded, target)
    except Exception as exc:
        reason = short_reason(exc, tracking_uri)
        logger.warning("the run's %s is not in MLflow (%s); the model is read without it", target.name, reason)


def _download(version: ModelVersion, source: str, target: Path, tracking_uri: str) -> None:
    uri = f"{MODEL_URI_PREFIX}{version.name}/{version.version}"
    _check_is_one_file(uri, source, tracking_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Into a temporary folder next to the target, checked, then renamed: a half download or wrong bytes
    # never take the target's place.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as folder:
        downloaded = _one_file(source, folder, tracking_uri)
        if downloaded is None:
            raise RegistryError(f"{uri}: its source is not one file; refused")
        if sha256_of(downloaded) != version.sha256:
            raise RegistryError(f"{uri}: the file MLflow holds is not the registered one (sha256 differs)")
        shutil.move(downloaded, target)


def _check_is_one_file(uri: str, source: str, tracking_uri: str) -> None:
    """Refuse a source that is a folder (an MLflow model directory, a whole run) before downloading it."""
    import mlflow.artifacts

    parent, _, name = source.rstrip("/").rpartition("/")
    listed = mlflow.artifacts.list_artifacts(artifact_uri=parent, tracking_uri=tracking_uri) if parent else []
    entry = next((item for item in listed if item.path.rpartition("/")[2] == name), None)
    if entry is None:
        raise RegistryError(f"{uri}: MLflow has no file at its source {redacted(source)}")
    if entry.is_dir:
        raise RegistryError(f"{uri}: its source {redacted(source)} is a folder, not a {MODEL_FILE} file; refused")


def _one_file(source: str, folder: str, tracking_uri: str) -> Path | None:
    """The artifact at `source` downloaded into `folder`, if it is one plain file (a link could point
    anywhere, a folder is not a model file)."""
    import mlflow.artifacts

    downloaded = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder, tracking_uri=tracking_uri)
    )
    return downloaded if downloaded.is_file() and not downloaded.is_symlink() else None
