"""The run directory: the one place that writes a run's files.

A run works in `<experiment>/<run>.incomplete/` and renames it to `<experiment>/<run>/` only when every output
is written, so a failed or interrupted run never leaves anything under the final name, and the unfinished
directory (with its checkpoint) is what `--resume` continues from.

The unfinished directory only ever appears complete with its first checkpoint and run.json: both are written
into a staging directory (`<run>.incomplete~staging-<pid>`) that is then renamed into place. Whoever runs or
resumes the run holds an advisory lock on that directory until the process ends, so a second process (a
scheduler restarting a job that still runs) is refused instead of writing beside it.

Nothing here imports torch at module level: reading runs (the `runs` command) needs no torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.errors import RunDirectoryError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pth"
METRICS_FILE = "metrics.json"
PLOT_FILE = "metrics.png"
CURVES_FILE = "curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
INCOMPLETE_SUFFIX = ".incomplete"
# "~" is not allowed in run names, so no run's directory can ever look like a staging directory.
STAGING_MARKER = ".incomplete~staging-"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def finite_json(value, where: str = "") -> tuple[object, list[str]]:
    """`value` with every NaN or infinite float replaced by None (strict JSON has neither), and where."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [f"{where or 'value'} ({value})"]
    if isinstance(value, dict):
        pairs = [(key, finite_json(item, f"{where}.{key}" if where else str(key))) for key, item in value.items()]
        return {key: item for key, (item, _) in pairs}, [place for _, (_, places) in pairs for place in places]
    if isinstance(value, list):
        items = [finite_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return [item for item, _ in items], [place for _, places in items for place in places]
    return value, []


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(directory: Path) -> int | None:
    """An exclusive advisory lock on `directory`, held until the returned descriptor is closed or the
    process ends (SIGKILL included); None if another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(directory: Path) -> bool:
    """Whether a live process runs in `directory` right now."""
    fd = _lock(directory)
    if fd is None:
        return True
    os.close(fd)
    return False


class RunDirectory:
    def __init__(self, run_dir: Path) -> None:
        self.final_dir = run_dir
        self.work_dir = run_dir.with_name(run_dir.name + INCOMPLETE_SUFFIX)
        self._lock_fd: int | None = None

    # --- before any work ---

    def check_can_start(self) -> None:
        if self.final_dir.exists():
            raise RunDirectoryError(f"run directory {self.final_dir} already exists; choose another --run_name")
        if self.work_dir.exists():
            if is_locked(self.work_dir):
                raise RunDirectoryError(f"another process is running {self.work_dir} right now")
            raise RunDirectoryError(
                f"an unfinished run exists in {self.work_dir}: continue it with --resume, or delete that folder"
            )

    def open_for_resume(self) -> dict:
        """Lock the unfinished run and return its checkpoint."""
        if self.final_dir.exists():
            raise RunDirectoryError(
                f"run {self.final_dir} is complete; a completed run cannot be resumed or overwritten"
            )
        if not self.work_dir.is_dir():
            raise RunDirectoryError(f"nothing to resume: no unfinished run in {self.work_dir}")
        self._lock_fd = _lock(self.work_dir)
        if self._lock_fd is None:
            raise RunDirectoryError(f"another process is running {self.work_dir} right now; it cannot be resumed")
        return self.load_checkpoint()

    def create(self, checkpoint: dict, manifest: dict) -> None:
        """Make the unfinished run directory, locked, with its first checkpoint and run.json already inside."""
        parent = self.work_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned_staging()
            staging = parent / f"{self.final_dir.name}{STAGING_MARKER}{os.getpid()}"
            staging.mkdir()
        except OSError as exc:
            raise RunDirectoryError(f"cannot create {self.work_dir}: {exc.strerror}") from None
        self._lock_fd = _lock(staging)
        self._save_checkpoint_in(staging, checkpoint)
        self._write_json_in(staging, RUN_FILE, manifest)
        _fsync_path(staging)
        try:
            # rename() refuses a non-empty target: of two processes starting the same run, one wins.
            os.rename(staging, self.work_dir)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise RunDirectoryError(f"another process started {self.work_dir} at the same time") from None
        _fsync_path(parent)

    def _remove_abandoned_staging(self) -> None:
        # What a process killed while creating this run left behind; a live one still holds its lock.
        for staging in self.work_dir.parent.glob(f"{self.final_dir.name}{STAGING_MARKER}*"):
            fd = _lock(staging)
            if fd is not None:
                shutil.rmtree(staging, ignore_errors=True)
                os.close(fd)

    # --- outputs ---

    def write_json(self, name: str, data: dict) -> None:
        self._write_json_in(self.work_dir, name, data)

    def save_model(self, state_dict: dict) -> str:
        """Write model.pth (CPU tensors, under its final name since its zip embeds it) and return its sha256."""
        import torch

        path = self.work_dir / MODEL_FILE
        # contiguous: the notebook's layout, whatever layout (channels-last) the run trained in
        torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}, path)
        _fsync_path(path)
        return sha256_of(path)

    def save_figure(self, name: str, figure: Figure) -> None:
        self._replace_atomically(self.work_dir, name, lambda path: figure.savefig(path, format="png", dpi=100))

    # --- checkpoints ---

    def save_checkpoint(self, checkpoint: dict) -> None:
        self._save_checkpoint_in(self.work_dir, checkpoint)

    def load_checkpoint(self) -> dict:
        import torch

        path = self.work_dir / CHECKPOINT_FILE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a checkpoint is written atomically, so this is damage from outside
            raise RunDirectoryError(f"cannot read checkpoint {path}: {exc}") from None

    # --- the end ---

    def finish(self) -> Path:
        """Publish the run under its final name in one rename, then drop the checkpoint.

        In this order a kill in between leaves a complete run with a spare checkpoint, never an unfinished
        directory without one (which could neither be resumed nor restarted).
        """
        _fsync_path(self.work_dir)  # the outputs' renames inside it reach the disk before it is published
        os.replace(self.work_dir, self.final_dir)
        _fsync_path(self.final_dir.parent)
        (self.final_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        return self.final_dir

    # --- writing one file ---

    def _save_checkpoint_in(self, directory: Path, checkpoint: dict) -> None:
        import torch

        self._replace_atomically(directory, CHECKPOINT_FILE, lambda path: torch.save(checkpoint, path))

    def _write_json_in(self, directory: Path, name: str, data: dict) -> None:
        data, replaced = finite_json(data)
        if replaced:
            logger.warning("%s: not a finite number, written as null: %s", name, ", ".join(replaced))
        text = json.dumps(data, indent=4, allow_nan=False) + "\n"
        self._replace_atomically(directory, name, lambda path: path.write_text(text, "utf-8"))

    @staticmethod
    def _replace_atomically(directory: Path, name: str, write: Callable[[Path], None]) -> None:
        # Write a sibling, flush it to disk, then rename over the old file: a kill at any moment leaves
        # either the previous complete file or the new one, never half of one.
        target = directory / name
        temporary = directory / f".{name}.tmp"
        write(temporary)
        _fsync_path(temporary)
        os.replace(temporary, target)
