"""The model registry in MLflow: the same interface as the registry file, for teams that run a server.

A version is an MLflow model version whose source is the `model.pth` artifact of the run's MLflow run; its
tags carry the sha256, the source run (EXPERIMENT/RUN) and the test accuracy. A run trained without MLflow
is logged to it when it is registered. Resolving a version uses the run folder's own model.pth when it is
on this machine with the registered bytes, else downloads the artifact (`mlflow_downloads.py`); either way
the sha256 is checked.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from image_classifier.errors import RegistryError, UserError
from image_classifier.run_dir import MODEL_FILE
from image_classifier.tracking.mlflow_client import connect, error_code, short_reason
from image_classifier.tracking.mlflow_downloads import download_path, local_copy
from image_classifier.tracking.mlflow_logger import MODEL_SHA256_TAG, log_finished_run
from image_classifier.tracking.records import RunRecord
from image_classifier.tracking.registry import (
    SHA256,
    ModelVersion,
    Registry,
    check_alias,
    check_model_file,
    check_model_name,
    parse_model_uri,
    refuse_registered_twice,
    version_of_source_run,
)
from image_classifier.tracking.uri import redacted

logger = logging.getLogger(__name__)

SHA256_TAG, SOURCE_RUN_TAG, TEST_ACCURACY_TAG = "sha256", "source_run", "test_accuracy"
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _timestamp(milliseconds: int | None) -> str:
    if milliseconds is None:
        return ""
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "", "None") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


class MlflowRegistry(Registry):
    def __init__(self, experiments_folder: Path, tracking_uri: str) -> None:
        self.experiments_folder = experiments_folder
        self.tracking_uri = tracking_uri
        self._client = connect(tracking_uri)

    @property
    def location(self) -> str:
        return f"the MLflow model registry at {redacted(self.tracking_uri)}"

    def _add_version(self, record: RunRecord, source_run: str, name: str, aliases: Sequence[str]) -> ModelVersion:
        with self._answers():
            registered = ((existing.version, existing.tags.get(SHA256_TAG)) for existing in self._search(name))
            refuse_registered_twice(source_run, name, record.model_sha256, registered)
            run_id = self._mlflow_run_with_model(record)
            artifact_uri = self._client.get_run(run_id).info.artifact_uri
            self._ensure_registered_model(name)
            tags = {SHA256_TAG: record.model_sha256, SOURCE_RUN_TAG: source_run}
            if record.test_accuracy is not None:
                tags[TEST_ACCURACY_TAG] = str(record.test_accuracy)
            created = self._client.create_model_version(
                name, source=f"{artifact_uri}/{MODEL_FILE}", run_id=run_id, tags=tags
            )
            for alias in aliases:
                self._client.set_registered_model_alias(name, alias, created.version)
            return self._model_version(self._client.get_model_version(name, created.version))

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        check_model_name(name)
        check_alias(alias)
        with self._answers():
            self._get_version(name, version)  # refuses an unknown name or version
            self._client.set_registered_model_alias(name, alias, str(version))
            return self._model_version(self._client.get_model_version(name, str(version)))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        if name is not None:
            check_model_name(name)
        with self._answers():
            if name is not None:
                self._get_registered_model(name)
            found = self._search(name)
            # Searches do not return aliases: they come from each registered model.
            aliases = {
                model_name: self._get_registered_model(model_name).aliases for model_name in {v.name for v in found}
            }
            listed = [self._model_version(version, aliases[version.name]) for version in found]
        return sorted(listed, key=lambda version: (version.name, version.version))

    def resolve(self, uri: str) -> ModelVersion:
        reference = parse_model_uri(uri)
        with self._answers():
            if reference.alias is not None:
                self._get_registered_model(reference.name)
                try:
                    found = self._client.get_model_version_by_alias(reference.name, reference.alias)
                except Exception as exc:
                    if error_code(exc) not in (*_NOT_FOUND, "INVALID_PARAMETER_VALUE"):
                        raise
                    raise RegistryError(f"{uri}: {reference.name} has no alias {reference.alias!r}") from None
            else:
                found = self._get_version(reference.name, reference.version)
            if found.name != reference.name:
                raise RegistryError(f"{uri}: MLflow answered with a version of another model ({found.name!r})")
            version = self._model_version(found)
            # Before anything is read or downloaded: without the hash there is nothing to check the file by.
            if not SHA256.fullmatch(version.sha256):
                raise RegistryError(
                    f"{uri}: its {SHA256_TAG!r} tag is missing or not a sha256, so its file cannot be checked; "
                    "refused (register versions with image_classifier_runs register)"
                )
            local = local_copy(version, found.source, self.experiments_folder, self.tracking_uri)
            return check_model_file(local, self.experiments_folder)

    # --- MLflow calls ---

    @contextlib.contextmanager
    def _answers(self) -> Iterator[None]:
        """Turn a failed MLflow call (server down, refused request) into one clear error line."""
        try:
            yield
        except UserError:
            raise
        except Exception as exc:
            reason = short_reason(exc, self.tracking_uri)
            raise RegistryError(f"MLflow at {redacted(self.tracking_uri)}: {reason}") from None

    def _search(self, name: str | None) -> list:
        # Names follow the run-name rule (no quotes), so they are safe inside the filter string.
        filter_string = f"name = '{name}'" if name is not None else None
        found, token = [], None
        while True:
            page = self._client.search_model_versions(filter_string, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _get_registered_model(self, name: str):
        try:
            return self._client.get_registered_model(name)
        except Exception as exc:
            if error_code(exc) not in _NOT_FOUND:
                raise
            raise RegistryError(f"no model named {name!r} in {self.location}") from None

    def _get_version(self, name: str, version: int):
        self._get_registered_model(name)
        try:
            return self._client.get_model_version(name, str(version))
        except Exception as exc:
            if error_code(exc) not in _NOT_FOUND:
                raise
            raise RegistryError(f"{name} has no version {version} in {self.location}") from None

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self._client.create_registered_model(name)
        except Exception as exc:  # it exists already: the usual case after the first version
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise

    def _mlflow_run_with_model(self, record: RunRecord) -> str:
        """The MLflow run holding this run's model.pth (found by the model's sha256 tag), else a new one."""
        experiment = self._client.get_experiment_by_name(record.experiment)
        if experiment is not None:
            runs = self._client.search_runs(
                [experiment.experiment_id], f"tags.{MODEL_SHA256_TAG} = '{record.model_sha256}'", max_results=10
            )
            for run in runs:
                if any(item.path == MODEL_FILE for item in self._client.list_artifacts(run.info.run_id)):
                    return run.info.run_id
        logger.info("logging %s to MLflow first: its model is not there yet", record.name)
        run_logger = log_finished_run(self.tracking_uri, record)
        if run_logger.error is not None:
            raise RegistryError(f"cannot log {record.name} to MLflow ({run_logger.error})")
        return run_logger.run_id

    # --- versions and their files ---

    def _model_version(self, found, aliases: dict | None = None) -> ModelVersion:
        """Our ModelVersion of an MLflow one; `aliases` (alias: version) where `found` lacks its own."""
        tags = dict(found.tags or {})
        own_aliases = found.aliases or [
            alias for alias, number in (aliases or {}).items() if str(number) == found.version
        ]
        version = int(found.version)
        return version_of_source_run(
            self.experiments_folder,
            tags.get(SOURCE_RUN_TAG, ""),
            name=found.name,
            version=version,
            aliases=own_aliases,
            sha256=tags.get(SHA256_TAG, ""),
            registered_at=_timestamp(found.creation_timestamp),
            test_accuracy=_float_or_none(tags.get(TEST_ACCURACY_TAG)),
            elsewhere=download_path(self.experiments_folder, found.name, version),
        )
