"""Errors a user can cause, and the clean stop: `main()` turns each into one line and an exit code."""

import signal
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or files, reported without a traceback."""


class DatasetError(UserError):
    """The dataset folder is missing, incomplete or holds files that are not CIFAR-10 batches."""


class ImageError(UserError):
    """Bytes that cannot be turned into the model's input; `status` is the HTTP status a service answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class PretrainedModelError(UserError):
    """The pretrained model file is missing, or does not hold weights that fit the model."""


class ModelSpecError(UserError):
    """A model spec (architecture, image size, normalisation, classes) that is invalid or cannot be built."""


class RunDirectoryError(UserError):
    """The run directory cannot be created, resumed or finished as asked."""


class DistributedRunError(UserError):
    """A process of a torchrun job failed or disagreed with the others; the run stays unfinished."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint was written; `--resume` continues it."""

    def __init__(self, signal_number: int, work_dir: Path) -> None:
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name}; the checkpoint is in {work_dir}: rerun the same command with --resume")


class RegistryError(UserError):
    """A model name, version or alias is unknown or invalid, or a registered model's file is missing or changed."""


class RunRecordError(UserError):
    """A run asked for by name does not exist or cannot be read."""
