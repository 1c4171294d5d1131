"""The one configuration object of a training run, built once from the command line and passed down."""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from image_classifier.errors import UserError
from image_classifier.model.spec import check_architecture_name
from image_classifier.run_dir import INCOMPLETE_SUFFIX

_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")

# Arguments that change how a run goes but never its results: a resumed or reproduced run may differ here.
RESULT_NEUTRAL_FIELDS = ("num_workers", "checkpoint_every", "resume", "force", "verbose", "cache_folder")


@dataclass(frozen=True)
class TrainConfig:
    experiment_name: str
    run_name: str
    experiments_folder: Path
    dataset_folder: Path
    # Image folders only (CIFAR-10 batches are 32 x 32 and split already): see data/folder.py.
    image_size: int = 32
    test_fraction: float = 0.2
    skip_bad_images: bool = False
    cache_folder: Path | None = None  # where image folders are prepared; None: prepared_keys.default_cache_folder()
    augment: bool = False
    learning_rate: float = 0.001
    momentum: float = 0.9
    num_epochs: int = 2
    num_workers: int = 2
    batch_size: int = 4
    eval_batch_size: int = 1000
    num_threads: int = 0  # 0: chosen from the batch size (see training_setup.torch_threads_for)
    channels_last: bool = True
    amp: bool = False
    architecture: str = "net"  # the notebook's Net, or a torchvision classification model by name
    pretrained_model: Path | None = None
    # --pretrained_model models:/NAME/VERSION or models:/NAME@ALIAS as given, and the version it resolved to
    # (tracking/pretrained.py then sets pretrained_model to that version's file).
    pretrained_model_uri: str | None = None
    pretrained_model_version: int | None = None
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    checkpoint_every: int = 0
    resume: bool = False
    force: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        for label, name in (("experiment name", self.experiment_name), ("run name", self.run_name)):
            check_name(label, name)
        if self.run_name.endswith(INCOMPLETE_SUFFIX):
            raise UserError(f"invalid run name {self.run_name!r}: '{INCOMPLETE_SUFFIX}' marks unfinished runs")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"invalid test fraction {self.test_fraction}: it must be between 0 and 1 (exclusive)")
        check_architecture_name(self.architecture)  # whether it exists is checked when the run starts

    @property
    def run_dir(self) -> Path:
        return self.experiments_folder / self.experiment_name / self.run_name

    def to_dict(self) -> dict:
        """Plain JSON-ready values (paths as strings); the password is not part of the config at all."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        paths = ("experiments_folder", "dataset_folder", "pretrained_model", "cache_folder")
        return cls(
            **{key: Path(value) if key in paths and value is not None else value for key, value in values.items()}
        )

    @staticmethod
    def default_result_fields() -> dict:
        """The result fields' defaults: what a checkpoint written before a field existed ran with."""
        return {
            field.name: field.default
            for field in fields(TrainConfig)
            if field.default is not MISSING and field.name not in RESULT_NEUTRAL_FIELDS
        }

    def result_fields(self) -> dict:
        """The arguments that determine a run's results, paths made absolute, to compare a resume with its run."""
        return {
            key: str(value.resolve()) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
            if key not in RESULT_NEUTRAL_FIELDS
        }


NAME_RULE = "letters, digits, '.', '_' and '-' (not '.' or '..')"


def is_valid_name(name: str) -> bool:
    return bool(_NAME_PATTERN.fullmatch(name)) and name not in (".", "..")


def check_name(label: str, name: str) -> None:
    if not is_valid_name(name):
        raise UserError(f"invalid {label} {name!r}: use {NAME_RULE}")
