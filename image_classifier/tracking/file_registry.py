"""The file backend of the model registry: one JSON document, `<experiments_folder>/registry.json`, for
work without a server (offline, CI, the container), and the checks that keep a damaged or hand-edited
document from reaching the code that reads it."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from image_classifier.clock import utc_timestamp
from image_classifier.durable_files import write_json_atomically
from image_classifier.errors import RegistryError
from image_classifier.locking import exclusive_lock, warn_if_lock_is_local
from image_classifier.tracking.records import RunRecord
from image_classifier.tracking.registry import (
    SHA256,
    ModelVersion,
    Registry,
    check_alias,
    check_model_file,
    check_model_name,
    is_source_run,
    parse_model_uri,
    refuse_registered_twice,
    version_of_source_run,
)

REGISTRY_FILE = "registry.json"
REGISTRY_FORMAT = 1
_SHOWN = 60  # characters of a damaged file's value quoted in an error


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

    def _add_version(self, record: RunRecord, source_run: str, name: str, aliases: Sequence[str]) -> ModelVersion:
        with self._changing() as document:
            model = document["models"].setdefault(name, {"versions": [], "aliases": {}})
            refuse_registered_twice(
                source_run,
                name,
                record.model_sha256,
                ((entry["version"], entry["sha256"]) for entry in model["versions"]),
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
        return version_of_source_run(
            self.experiments_folder,
            entry["source_run"],
            name=name,
            version=version,
            aliases=(alias for alias, number in document["models"][name]["aliases"].items() if number == version),
            sha256=entry["sha256"],
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
