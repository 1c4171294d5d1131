"""The model registry's shared part: what a version is, the `models:/` URIs that name one, the checks of
names, aliases and source runs, and the interface both backends implement with the steps they share.

A model version is a completed run's `model.pth`, identified by its sha256 (the one in `run.json`). The
registry records the source run and the hash; it never copies weights. Two backends, one interface:

- `FileRegistry` (`file_registry.py`, default): one JSON document, `<experiments_folder>/registry.json`, for
  work without a server (offline, CI, the container).
- `MlflowRegistry` (`mlflow_registry.py`): MLflow's model registry, when a tracking URI is set.

`registries.open_registry` picks one, so that neither backend imports the other:

    registry = open_registry(Path("experiments"))
    registry.register(Path("experiments/local_exp/run_1"), "cifar-net", aliases=["production"])
    registry.resolve("models:/cifar-net@production").model_path   # checked against its sha256
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from image_classifier.config import check_name
from image_classifier.errors import RegistryError, UserError
from image_classifier.run_dir import MODEL_FILE, sha256_of
from image_classifier.tracking.records import COMPLETED, RunRecord, read_run

MODEL_URI_PREFIX = "models:/"
# models:/NAME/VERSION or models:/NAME@ALIAS; the names themselves are checked by check_name afterwards.
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))")
# MLflow refuses these as aliases (they read as versions); refusing them in both backends keeps one rule.
_RESERVED_ALIAS = re.compile(r"latest|v?\d+", re.IGNORECASE)
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    aliases: tuple[str, ...]
    model_path: Path  # the weights on this machine
    sha256: str  # of model_path's bytes when registered
    source_run: str  # EXPERIMENT/RUN
    run_dir: Path | None  # the source run's folder, when it is on this machine
    registered_at: str  # ISO 8601, UTC
    test_accuracy: float | None  # % of the source run's test set


@dataclass(frozen=True)
class ModelReference:
    """A parsed `models:/` URI: a version number or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{MODEL_URI_PREFIX}{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_model_uri(text: str) -> bool:
    """Whether `text` is meant as a registry reference (it starts with `models:/`), valid or not."""
    return str(text).startswith(MODEL_URI_PREFIX)


def check_model_name(name: str) -> None:
    _check("model name", name)


def check_alias(alias: str) -> None:
    _check("alias", alias)
    if _RESERVED_ALIAS.fullmatch(alias):
        raise RegistryError(f"invalid alias {alias!r}: 'latest' and numbers (with or without a 'v') read as versions")


def _check(label: str, name: str) -> None:
    try:
        check_name(label, name)
    except UserError as exc:
        raise RegistryError(str(exc)) from None


def parse_model_uri(uri: str) -> ModelReference:
    match = _MODEL_URI.fullmatch(uri)
    if not match:
        raise RegistryError(f"{uri!r} is not a model URI: use models:/NAME/VERSION or models:/NAME@ALIAS")
    check_model_name(match["name"])
    if match["alias"] is not None:
        check_alias(match["alias"])
        return ModelReference(match["name"], alias=match["alias"])
    if not match["version"].isdigit() or int(match["version"]) < 1:
        raise RegistryError(f"{uri!r}: the version must be a whole number from 1 (or use @ALIAS)")
    return ModelReference(match["name"], version=int(match["version"]))


def registrable_run(run_dir: Path) -> RunRecord:
    """The record of a completed run whose model.pth still has the bytes its run.json names."""
    record = read_run(run_dir)
    if record.status != COMPLETED:
        detail = f" ({record.reason})" if record.reason else ""
        raise RegistryError(f"only a completed run can be registered; {run_dir} is {record.status}{detail}")
    model_path = run_dir / MODEL_FILE
    if not model_path.is_file():
        raise RegistryError(f"{run_dir} has no {MODEL_FILE}")
    if record.model_sha256 is None:
        raise RegistryError(f"{run_dir}/run.json names no model_sha256, so its model cannot be identified")
    if sha256_of(model_path) != record.model_sha256:
        raise RegistryError(f"{model_path} changed since its run wrote it (its sha256 is not the one in run.json)")
    return record


def source_run_of(experiments_folder: Path, run_dir: Path) -> str:
    """EXPERIMENT/RUN of a run folder, which must lie in `experiments_folder` (symbolic links followed)."""
    try:
        relative = run_dir.resolve().relative_to(experiments_folder.resolve())
    except ValueError:
        raise RegistryError(f"{run_dir} is not a run in {experiments_folder}") from None
    if len(relative.parts) != 2:
        raise RegistryError(f"{run_dir} is not a run folder ({experiments_folder}/EXPERIMENT/RUN)")
    if not is_inside(experiments_folder, run_dir / MODEL_FILE):
        raise RegistryError(f"{run_dir / MODEL_FILE} is a link to a file outside {experiments_folder}")
    return "/".join(relative.parts)


def is_source_run(text) -> bool:
    """Whether `text` is EXPERIMENT/RUN with two valid names: a folder inside the experiments folder."""
    if not isinstance(text, str) or text.count("/") != 1:
        return False
    try:
        for label, name in zip(("experiment name", "run name"), text.split("/")):
            check_name(label, name)
    except UserError:
        return False
    return True


def is_inside(experiments_folder: Path, path: Path) -> bool:
    """Whether `path`, symbolic links followed, lies in `experiments_folder`."""
    return path.resolve().is_relative_to(experiments_folder.resolve())


def check_model_file(version: ModelVersion, experiments_folder: Path) -> ModelVersion:
    """Refuse a version whose file is gone, lies outside the experiments folder (a link out of it) or whose
    bytes changed: it must never be used silently."""
    uri = f"{MODEL_URI_PREFIX}{version.name}/{version.version}"
    if not is_inside(experiments_folder, version.model_path):
        raise RegistryError(f"{uri}: {version.model_path} leads outside {experiments_folder}; refused")
    if not version.model_path.is_file():
        raise RegistryError(f"{uri}: its model file {version.model_path} is missing")
    if sha256_of(version.model_path) != version.sha256:
        raise RegistryError(
            f"{uri}: {version.model_path} changed since it was registered (sha256 {version.sha256[:12]}... expected)"
        )
    return version


def version_of_source_run(
    experiments_folder: Path,
    source_run: str,
    *,
    name: str,
    version: int,
    aliases: Iterable[str],
    sha256: str,
    registered_at: str,
    test_accuracy: float | None,
    elsewhere: Path | None = None,
) -> ModelVersion:
    """A version whose weights are its source run's model.pth when that run's folder is on this machine;
    else at `elsewhere` (MLflow's download), or where the folder would be (the registry file, whose source
    runs are checked when it is read). `source_run` may be anybody's text (an MLflow tag): only
    EXPERIMENT/RUN names a run folder here (never "../..", never a path)."""
    run_dir = experiments_folder / source_run if is_source_run(source_run) else None
    run_dir = run_dir if run_dir is not None and run_dir.is_dir() else None
    if run_dir is not None:
        model_path = run_dir / MODEL_FILE
    else:
        model_path = elsewhere if elsewhere is not None else experiments_folder / source_run / MODEL_FILE
    return ModelVersion(
        name=name,
        version=version,
        aliases=tuple(sorted(aliases)),
        model_path=model_path,
        sha256=sha256,
        source_run=source_run,
        run_dir=run_dir,
        registered_at=registered_at,
        test_accuracy=test_accuracy,
    )


def refuse_registered_twice(source_run: str, name: str, sha256: str, registered: Iterable[tuple[object, str]]) -> None:
    """Refuse a model whose bytes are already a version of `name` (`registered`: (version, sha256) pairs):
    a second number for the same weights would only split its aliases."""
    for number, digest in registered:
        if digest == sha256:
            raise RegistryError(
                f"{source_run}'s model is already version {number} of {name}; "
                f"to point an alias at it: image_classifier_runs alias {name} ALIAS {number}"
            )


class Registry(abc.ABC):
    """Named model versions; `resolve` is the one way to turn a `models:/` URI into weights on disk."""

    experiments_folder: Path

    def register(self, run_dir: Path, name: str, aliases: Sequence[str] = ()) -> ModelVersion:
        """Add the completed run's model as the next version of `name` (1, 2, 3, ...), with `aliases`.
        Everything is checked before the backend is asked to change anything."""
        check_model_name(name)
        for alias in aliases:
            check_alias(alias)
        source_run = source_run_of(self.experiments_folder, run_dir)
        record = registrable_run(run_dir)
        return self._add_version(record, source_run, name, aliases)

    @abc.abstractmethod
    def _add_version(self, record: RunRecord, source_run: str, name: str, aliases: Sequence[str]) -> ModelVersion:
        """`register` once its arguments are checked: refuse a model registered already
        (`refuse_registered_twice`), else add the next version."""

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        """Point `alias` of `name` at `version`, moving it from the version it pointed at before."""

    @abc.abstractmethod
    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version of `name`, or of every model, by name then version; files are not checked."""

    @abc.abstractmethod
    def resolve(self, uri: str) -> ModelVersion:
        """The version `models:/NAME/VERSION` or `models:/NAME@ALIAS` names, its file checked by sha256."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the registry lives, for messages."""
