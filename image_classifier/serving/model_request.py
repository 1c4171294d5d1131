"""What the user asked to load, for the predict command and the service alike (no torch here: the commands
build it while parsing, before anything heavy is imported)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelRequest:
    model: str  # a run folder, a model.pth, models:/NAME/VERSION or models:/NAME@ALIAS
    classes: tuple[str, ...] | None = None
    metadata: Path | None = None
    experiments_folder: Path = Path("experiments")
    tracking_uri: str | None = field(default=None, repr=False)  # it may carry credentials
