"""The one place serving touches the model registry (`image_classifier.tracking.registry`).

Imported lazily, so that serving a run folder or a model.pth works without the registry's dependencies.
"""

from __future__ import annotations

from pathlib import Path

from image_classifier.serving.errors import ModelSourceError

MODEL_URI_PREFIX = "models:/"


def is_model_uri(text: str) -> bool:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` (also when the registry is not installed)."""
    if not text.startswith(MODEL_URI_PREFIX):
        return False  # without importing the registry (and the run-folder helpers it reads runs with)
    try:
        from image_classifier.tracking.registry import is_model_uri as registry_is_model_uri
    except ImportError:
        return text.startswith(MODEL_URI_PREFIX)
    return registry_is_model_uri(text)


def is_alias_uri(text: str) -> bool:
    """An alias can move to another version; a version number cannot."""
    return is_model_uri(text) and "@" in text


def resolve(uri: str, experiments_folder: Path, tracking_uri: str | None):
    """The registry's `ModelVersion` for `uri`; the registry raises a UserError when it cannot."""
    try:
        from image_classifier.tracking.registries import open_registry
    except ImportError as exc:
        raise ModelSourceError(
            f"{uri} needs the model registry (image_classifier.tracking.registry), which cannot be imported "
            f"here ({exc})"
        ) from None
    return open_registry(experiments_folder, tracking_uri).resolve(uri)
