"""`image_classifier_runs register`, `alias` and `models`: naming runs' models in the registry (the file or
MLflow's), and the registered versions that `list` and `show` name beside each run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from image_classifier.errors import UserError
from image_classifier.tracking.records import find_run
from image_classifier.tracking.registries import open_registry
from image_classifier.tracking.registry import ModelVersion
from image_classifier.tracking.runs_configs import AliasConfig, ModelsConfig, RegisterConfig
from image_classifier.tracking.tables import SHA_PREFIX, format_rows

logger = logging.getLogger(__name__)

MODEL_COLUMNS = ("name", "version", "aliases", "source_run", "test_accuracy", "registered_at", "sha256")


def registered_versions(experiments_folder: Path, tracking_uri: str | None) -> list[ModelVersion]:
    """The registry's versions for `list` and `show`; a registry that cannot be opened or read (damaged,
    a server that is down, MLflow not installed) does not stop them: it is one warning."""
    try:
        return open_registry(experiments_folder, tracking_uri).versions()
    except UserError as exc:
        logger.warning("registered versions not shown: %s", exc)
        return []


def version_labels(versions: Sequence[ModelVersion]) -> dict[str, list[str]]:
    """`NAME/VERSION` (with `@ALIAS`es) of every registered version, by source run."""
    labels: dict[str, list[str]] = {}
    for version in versions:
        label = f"{version.name}/{version.version}" + "".join(f"@{alias}" for alias in version.aliases)
        labels.setdefault(version.source_run, []).append(label)
    return labels


def _describe(version: ModelVersion) -> str:
    aliases = f" (aliases: {', '.join(version.aliases)})" if version.aliases else ""
    return f"{version.name} version {version.version}{aliases}"


def register_command(config: RegisterConfig) -> int:
    record = find_run(config.experiments_folder, config.run)
    registry = open_registry(config.experiments_folder, config.tracking_uri)
    version = registry.register(record.folder, config.name, config.aliases)
    print(f"registered {config.run} as {_describe(version)} in {registry.location}")
    print(f"use it as models:/{version.name}/{version.version}")
    return 0


def alias_command(config: AliasConfig) -> int:
    registry = open_registry(config.experiments_folder, config.tracking_uri)
    version = registry.set_alias(config.name, config.alias, config.version)
    print(f"models:/{config.name}@{config.alias} is now {_describe(version)} (from {version.source_run})")
    return 0


def model_row(version: ModelVersion) -> dict:
    return {
        "name": version.name,
        "version": version.version,
        "aliases": list(version.aliases),
        "source_run": version.source_run,
        "test_accuracy": version.test_accuracy,
        "registered_at": version.registered_at,
        "sha256": version.sha256,
    }


def models_command(config: ModelsConfig) -> int:
    registry = open_registry(config.experiments_folder, config.tracking_uri)
    rows = [model_row(version) for version in registry.versions(config.name)]
    if config.format == "table":
        for row in rows:
            row["sha256"] = row["sha256"][:SHA_PREFIX]
    if not rows and config.format == "table":
        print(f"no models registered in {registry.location} yet")
        return 0
    print(format_rows(rows, MODEL_COLUMNS, config.format))
    return 0
