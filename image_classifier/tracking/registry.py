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
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from image_classifier.clock import utc_timestamp
from image_classifier.config import check_name
from image_classifier.durable_files import write_json_atomically
from image_classifier.errors import RegistryError, UserError
from image_classifier.locking import exclusive_lock
from image_classifier.run_dir import MODEL_FILE, sha256_of, warn_if_lock_is_local
from image_classifier.tracking.records import COMPLETED, RunRecord, read_run

MODEL_URI_PREFIX = "models:/"
REGISTRY_FILE = "registry.json"
REGISTRY_FORMAT = 1
# models:/NAME/VERSION or models:/NAME@ALIAS; the names themselves are checked by check_name afterwards.
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))")
# MLflow refuses these as aliases (they read as versions); refusing them in both backends keeps one rule.
_RESERVED_ALIAS = re.compile(r"latest|v?\d+", re.IGNORECASE)
SHA256 = re.compile(r"[0-9a-f]{64}")
_SHOWN = 60  # characters of a damaged file's value quoted in an error


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
                    "registered_at": utc_timestamp(),
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
        return check_model_file(self._version_of(document, reference.name, number), self.experiments_folder)

    # --- the document ---

    def _read(self) -> dict:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {"format": REGISTRY_FORMAT, "models": {}}
        except OSError as exc:
            raise RegistryError(f"cannot read the registry {self.path}: {exc.strerror}") from None
        try:
            return _checked_document(json.loads(data.decode("utf-8"), parse_constant=_not_json))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise RegistryError(f"the registry {self.path} is damaged ({reason}); restore it from a backup") from None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict]:
        """The current document, to change in place; written back only if the block ends without error."""
        if not self.experiments_folder.is_dir():
            raise RegistryError(f"no experiments folder {self.experiments_folder}")
        warn_if_lock_is_local(self.experiments_folder, "image_classifier_runs register or alias on it")
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(self.lock_path))
            except OSError as exc:
                raise RegistryError(f"cannot lock the registry ({self.lock_path}): {exc.strerror}") from None
            document = self._read()
            yield document
            try:
                write_json_atomically(self.path, document)
            except OSError as exc:  # a full disk, a read-only folder
                raise RegistryError(f"cannot write the registry {self.path}: {exc.strerror}") from None

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


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_document(document) -> dict:
    """The parsed registry with every field the code reads checked, so that a damaged or hand-edited file
    fails here, with what is wrong, and never later with a traceback. Raises ValueError."""
    if not isinstance(document, dict) or document.get("format") != REGISTRY_FORMAT:
        raise ValueError(f"not a registry document of format {REGISTRY_FORMAT}")
    models = document.get("models")
    if not isinstance(models, dict):
        raise ValueError('"models" is not an object')
    for name, model in models.items():
        try:
            check_model_name(name)
        except RegistryError:
            raise ValueError(f"invalid model name {_shown(name)}") from None
        if not (isinstance(model, dict) and isinstance(model.get("versions"), list)):
            raise ValueError(f"model {name} has no list of versions")
        if not isinstance(model.get("aliases"), dict):
            raise ValueError(f"model {name} has no object of aliases")
        numbers = [_checked_entry(name, entry) for entry in model["versions"]]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"the versions of {name} are not distinct")
        for alias, number in model["aliases"].items():
            try:
                check_alias(alias)
            except RegistryError:
                raise ValueError(f"invalid alias {_shown(alias)} of {name}") from None
            if not _is_whole(number) or number not in numbers:
                raise ValueError(f"alias {alias} of {name} points at {_shown(number)}, not one of its versions")
    return document


def _checked_entry(name: str, entry) -> int:
    """One version's entry checked; its number."""
    if not isinstance(entry, dict):
        raise ValueError(f"a version of {name} is {_shown(entry)}, not an object")
    number = entry.get("version")
    if not _is_whole(number) or number < 1:
        raise ValueError(f"a version of {name} has the number {_shown(number)}, not a whole number from 1")
    where = f"{name} version {number}"
    if not is_source_run(entry.get("source_run")):
        raise ValueError(f"{where}: source_run {_shown(entry.get('source_run'))} is not EXPERIMENT/RUN")
    if not (isinstance(entry.get("sha256"), str) and SHA256.fullmatch(entry["sha256"])):
        raise ValueError(f"{where}: sha256 {_shown(entry.get('sha256'))} is not a sha256")
    if not isinstance(entry.get("registered_at"), str):
        raise ValueError(f"{where}: registered_at {_shown(entry.get('registered_at'))} is not a time")
    accuracy = entry.get("test_accuracy")
    if accuracy is not None and not (
        isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) and math.isfinite(accuracy)
    ):
        raise ValueError(f"{where}: test_accuracy {_shown(accuracy)} is not a number")
    return number


def open_registry(experiments_folder: Path, tracking_uri: str | None = None) -> Registry:
    """The MLflow registry when a tracking URI is given (MLflow is imported only then), else the file."""
    if tracking_uri:
        from image_classifier.tracking.mlflow_registry import MlflowRegistry

        return MlflowRegistry(experiments_folder, tracking_uri)
    return FileRegistry(experiments_folder)
