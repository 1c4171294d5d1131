"""The model registry: named, numbered versions of runs' models, with movable aliases.

A model version is a completed run's `model.pth`, identified by its sha256 (the one in `run.json`). The
registry records the source run and the hash; it never copies weights. Two backends, one interface:

- `FileRegistry` (default): one JSON document, `<experiments_folder>/registry.json`, for work without a
  server (offline, CI, the container).
- `MlflowRegistry` (`mlflow_registry.py`): MLflow's model registry, when a tracking URI is set.

    registry = open_registry(Path("experiments"))
    registry.register(Path("experiments/local_exp/run_1"), "cifar-net", aliases=["production"])
    registry.resolve("models:/cifar-net@production").model_path   # checked against its sha256
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from image_classifier.config import check_name
from image_classifier.errors import RegistryError, UserError
from image_classifier.locking import exclusive_lock
from image_classifier.run_dir import MODEL_FILE, sha256_of
from image_classifier.tracking.files import write_json_atomically
from image_classifier.tracking.records import COMPLETED, RunRecord, read_run

MODEL_URI_PREFIX = "models:/"
REGISTRY_FILE = "registry.json"
REGISTRY_FORMAT = 1
# models:/NAME/VERSION or models:/NAME@ALIAS; the names themselves are checked by check_name afterwards.
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))")
# MLflow refuses these as aliases (they read as versions); refusing them in both backends keeps one rule.
_RESERVED_ALIAS = re.compile(r"latest|v?\d+", re.IGNORECASE)


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


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
    """EXPERIMENT/RUN of a run folder, which must lie in `experiments_folder`."""
    try:
        relative = run_dir.resolve().relative_to(experiments_folder.resolve())
    except ValueError:
        raise RegistryError(f"{run_dir} is not a run in {experiments_folder}") from None
    if len(relative.parts) != 2:
        raise RegistryError(f"{run_dir} is not a run folder ({experiments_folder}/EXPERIMENT/RUN)")
    return "/".join(relative.parts)


def check_model_file(version: ModelVersion) -> ModelVersion:
    """Refuse a version whose file is gone or whose bytes changed: it must never be used silently."""
    uri = f"{MODEL_URI_PREFIX}{version.name}/{version.version}"
    if not version.model_path.is_file():
        raise RegistryError(f"{uri}: its model file {version.model_path} is missing")
    if sha256_of(version.model_path) != version.sha256:
        raise RegistryError(
            f"{uri}: {version.model_path} changed since it was registered (sha256 {version.sha256[:12]}... expected)"
        )
    return version


class Registry(abc.ABC):
    """Named model versions; `resolve` is the one way to turn a `models:/` URI into weights on disk."""

    @abc.abstractmethod
    def register(self, run_dir: Path, name: str, aliases: Sequence[str] = ()) -> ModelVersion:
        """Add the completed run's model as the next version of `name` (1, 2, 3, ...), with `aliases`."""

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


class FileRegistry(Registry):
    """The registry as one JSON document in the experiments folder.

    {"format": 1, "models": {NAME: {"versions": [{"version": 1, "source_run": "E/R", "sha256": ...,
    "registered_at": ..., "test_accuracy": ...}], "aliases": {ALIAS: VERSION}}}}

    Source runs are stored relative to the experiments folder, so the folder can move or be copied.
    Every change is a read-modify-write under an exclusive `flock` on `registry.json.lock`, written as a
    temporary file + fsync + rename: concurrent writers serialise, and a crash leaves the old or the new
    document. Readers need no lock, since the rename replaces the document in one step.
    """

    def __init__(self, experiments_folder: Path) -> None:
        self.experiments_folder = experiments_folder
        self.path = experiments_folder / REGISTRY_FILE
        self.lock_path = experiments_folder / (REGISTRY_FILE + ".lock")

    @property
    def location(self) -> str:
        return str(self.path)

    def register(self, run_dir: Path, name: str, aliases: Sequence[str] = ()) -> ModelVersion:
        check_model_name(name)
        for alias in aliases:
            check_alias(alias)
        source_run = source_run_of(self.experiments_folder, run_dir)
        record = registrable_run(run_dir)
        with self._changing() as document:
            model = document["models"].setdefault(name, {"versions": [], "aliases": {}})
            for entry in model["versions"]:
                if entry["sha256"] == record.model_sha256:
                    raise RegistryError(
                        f"{source_run}'s model is already version {entry['version']} of {name}; "
                        f"to point an alias at it: image_classifier_runs alias {name} ALIAS {entry['version']}"
                    )
            number = max((entry["version"] for entry in model["versions"]), default=0) + 1
            model["versions"].append(
                {
                    "version": number,
                    "source_run": source_run,
                    "sha256": record.model_sha256,
                    "registered_at": now_utc(),
                    "test_accuracy": record.test_accuracy,
                }
            )
            model["aliases"].update({alias: number for alias in aliases})
        return self._version_of(document, name, number)

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        check_model_name(name)
        check_alias(alias)
        with self._changing() as document:
            self._entry(document, name, version)  # refuses an unknown name or version
            document["models"][name]["aliases"][alias] = version
        return self._version_of(document, name, version)

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        document = self._read()
        if name is not None:
            check_model_name(name)
            if name not in document["models"]:
                raise RegistryError(self._unknown_model(document, name))
        names = [name] if name is not None else sorted(document["models"])
        return [
            self._version_of(document, model_name, entry["version"])
            for model_name in names
            for entry in sorted(document["models"][model_name]["versions"], key=lambda e: e["version"])
        ]

    def resolve(self, uri: str) -> ModelVersion:
        reference = parse_model_uri(uri)
        document = self._read()
        if reference.name not in document["models"]:
            raise RegistryError(self._unknown_model(document, reference.name))
        number = reference.version
        if reference.alias is not None:
            aliases = document["models"][reference.name]["aliases"]
            if reference.alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise RegistryError(f"{uri}: {reference.name} has no alias {reference.alias!r} (aliases: {known})")
            number = aliases[reference.alias]
        return check_model_file(self._version_of(document, reference.name, number))

    # --- the document ---

    def _read(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"format": REGISTRY_FORMAT, "models": {}}
        except OSError as exc:
            raise RegistryError(f"cannot read the registry {self.path}: {exc.strerror}") from None
        try:
            document = _checked_document(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"the registry {self.path} is damaged ({exc}); restore it from a backup") from None
        return document

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict]:
        """The current document, to change in place; written back only if the block ends without error."""
        if not self.experiments_folder.is_dir():
            raise RegistryError(f"no experiments folder {self.experiments_folder}")
        with exclusive_lock(self.lock_path):
            document = self._read()
            yield document
            write_json_atomically(self.path, document)

    # --- entries ---

    def _entry(self, document: dict, name: str, version: int) -> dict:
        if name not in document["models"]:
            raise RegistryError(self._unknown_model(document, name))
        for entry in document["models"][name]["versions"]:
            if entry["version"] == version:
                return entry
        known = ", ".join(str(e["version"]) for e in document["models"][name]["versions"])
        raise RegistryError(f"{name} has no version {version} (versions: {known})")

    def _version_of(self, document: dict, name: str, version: int) -> ModelVersion:
        entry = self._entry(document, name, version)
        run_dir = self.experiments_folder / entry["source_run"]
        aliases = sorted(alias for alias, number in document["models"][name]["aliases"].items() if number == version)
        return ModelVersion(
            name=name,
            version=version,
            aliases=tuple(aliases),
            model_path=run_dir / MODEL_FILE,
            sha256=entry["sha256"],
            source_run=entry["source_run"],
            run_dir=run_dir if run_dir.is_dir() else None,
            registered_at=entry["registered_at"],
            test_accuracy=entry.get("test_accuracy"),
        )

    def _unknown_model(self, document: dict, name: str) -> str:
        known = ", ".join(sorted(document["models"])) or "none yet"
        return f"no model named {name!r} in {self.path} (models: {known})"


def _checked_document(document) -> dict:
    """The parsed registry, its shape checked, so that a hand-edited file fails here with a clear message."""
    if not isinstance(document, dict) or document.get("format") != REGISTRY_FORMAT:
        raise ValueError(f"not a registry document of format {REGISTRY_FORMAT}")
    for name, model in document["models"].items():
        numbers = {entry["version"] for entry in model["versions"]}
        if any(not isinstance(number, int) for number in numbers) or len(numbers) != len(model["versions"]):
            raise ValueError(f"the versions of {name} are not distinct whole numbers")
        if not set(model["aliases"].values()) <= numbers:
            raise ValueError(f"an alias of {name} points at a version that does not exist")
    return document


def open_registry(experiments_folder: Path, tracking_uri: str | None = None) -> Registry:
    """The MLflow registry when a tracking URI is given (MLflow is imported only then), else the file."""
    if tracking_uri:
        from image_classifier.tracking.mlflow_registry import MlflowRegistry

        return MlflowRegistry(experiments_folder, tracking_uri)
    return FileRegistry(experiments_folder)
