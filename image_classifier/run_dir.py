"""The run directory: the one place that writes a run's files.

A run works in `<experiment>/<run>.incomplete/` and renames it to `<experiment>/<run>/` only when every output
is written, so a failed or interrupted run never leaves anything under the final name, and the unfinished
directory (with its checkpoint) is what `--resume` continues from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure

from image_classifier.errors import RunDirectoryError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pth"
METRICS_FILE = "metrics.json"
PLOT_FILE = "metrics.png"
RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
INCOMPLETE_SUFFIX = ".incomplete"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunDirectory:
    def __init__(self, run_dir: Path) -> None:
        self.final_dir = run_dir
        self.work_dir = run_dir.with_name(run_dir.name + INCOMPLETE_SUFFIX)

    # --- before any work ---

    def check_can_start(self) -> None:
        if self.final_dir.exists():
            raise RunDirectoryError(f"run directory {self.final_dir} already exists; choose another --run_name")
        if self.work_dir.exists():
            raise RunDirectoryError(
                f"an unfinished run exists in {self.work_dir}: continue it with --resume, or delete that folder"
            )

    def check_can_resume(self) -> None:
        if self.final_dir.exists():
            raise RunDirectoryError(
                f"run {self.final_dir} is complete; a completed run cannot be resumed or overwritten"
            )
        if not (self.work_dir / CHECKPOINT_FILE).is_file():
            raise RunDirectoryError(f"nothing to resume: no checkpoint in {self.work_dir}")

    def create(self) -> None:
        try:
            self.work_dir.mkdir(parents=True)
        except OSError as exc:
            raise RunDirectoryError(f"cannot create {self.work_dir}: {exc.strerror}") from None

    # --- outputs ---

    def write_json(self, name: str, data: dict) -> None:
        self._replace_atomically(name, lambda path: path.write_text(json.dumps(data, indent=4) + "\n", "utf-8"))

    def save_model(self, state_dict: dict) -> str:
        """Write model.pth under its final name (its zip embeds the name) and return its sha256."""
        path = self.work_dir / MODEL_FILE
        torch.save(state_dict, path)
        return sha256_of(path)

    def save_figure(self, figure: Figure) -> None:
        self._replace_atomically(PLOT_FILE, lambda path: figure.savefig(path, format="png", dpi=100))

    # --- checkpoints ---

    def save_checkpoint(self, checkpoint: dict) -> None:
        self._replace_atomically(CHECKPOINT_FILE, lambda path: torch.save(checkpoint, path))

    def load_checkpoint(self) -> dict:
        path = self.work_dir / CHECKPOINT_FILE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a checkpoint is written atomically, so this is damage from outside
            raise RunDirectoryError(f"cannot read checkpoint {path}: {exc}") from None

    def read_json(self, name: str) -> dict:
        return read_json(self.work_dir / name)

    # --- the end ---

    def finish(self) -> Path:
        """Publish the run under its final name in one rename, then drop the checkpoint.

        In this order a kill in between leaves a complete run with a spare checkpoint, never an unfinished
        directory without one (which could neither be resumed nor restarted).
        """
        os.replace(self.work_dir, self.final_dir)
        _fsync_dir(self.final_dir.parent)
        (self.final_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        return self.final_dir

    def _replace_atomically(self, name: str, write) -> None:
        # Write a sibling, flush it to disk, then rename over the old file: a kill at any moment leaves
        # either the previous complete file or the new one, never half of one.
        target = self.work_dir / name
        temporary = self.work_dir / f".{name}.tmp"
        write(temporary)
        with temporary.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
