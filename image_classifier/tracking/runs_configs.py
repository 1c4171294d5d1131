"""One frozen configuration per `image_classifier_runs` subcommand, built once from its parsed arguments
(`runs.config_from_args`) and handed to the subcommand: below both, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RegistryOptions:
    """Where the runs are, and which registry names their models: what every subcommand but `compare`
    reads (the registry's versions, or the registry itself)."""

    experiments_folder: Path
    tracking_uri: str | None = field(repr=False)  # it may carry credentials


@dataclass(frozen=True)
class ListConfig(RegistryOptions):
    experiment: str | None
    sort: str
    descending: bool
    format: str
    wide: bool = False


@dataclass(frozen=True)
class ShowConfig(RegistryOptions):
    run: str
    format: str
    full: bool = False


@dataclass(frozen=True)
class CompareConfig:
    experiments_folder: Path
    runs: tuple[str, ...]
    plot: Path | None
    format: str = "text"


@dataclass(frozen=True)
class RegisterConfig(RegistryOptions):
    run: str
    name: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class AliasConfig(RegistryOptions):
    name: str
    alias: str
    version: int


@dataclass(frozen=True)
class ModelsConfig(RegistryOptions):
    name: str | None
    format: str
