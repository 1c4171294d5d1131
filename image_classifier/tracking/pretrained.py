"""`--pretrained_model models:/NAME/VERSION` or `models:/NAME@ALIAS`: which file that is, checked."""

from __future__ import annotations

import dataclasses
import logging

from image_classifier.config import TrainConfig
from image_classifier.tracking.registries import open_registry

logger = logging.getLogger(__name__)


def resolve_pretrained_model(config: TrainConfig, tracking_uri: str | None) -> TrainConfig:
    """`config` with the registered model's file as `pretrained_model` and its version number recorded.

    A config whose URI was resolved already (a reproduced run's, read from run.json) stays as it is, so a
    moved alias never changes what a recorded run started from.
    """
    if config.pretrained_model_uri is None or config.pretrained_model is not None:
        return config
    version = open_registry(config.experiments_folder, tracking_uri).resolve(config.pretrained_model_uri)
    logger.info(
        "pretrained model %s is %s version %d (run %s, sha256 %s...)",
        config.pretrained_model_uri,
        version.name,
        version.version,
        version.source_run,
        version.sha256[:12],
    )
    return dataclasses.replace(config, pretrained_model=version.model_path, pretrained_model_version=version.version)
