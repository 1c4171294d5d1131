"""The run directory: the one place that writes a run's files.

A run works in `<experiment>/<run>.incomplete/` and renames it to `<experiment>/<run>/` only when every output
is written, so a failed or interrupted run never leaves anything under the final name, and the unfinished
directory (with its checkpoint) is what `--resume` continues from.

The unfinished directory only ever appears complete with its first checkpoint and run.json: both are written
into a staging directory (`<run>.incomplete~staging-<pid>`) that is then renamed into place. Whoever runs or
resumes the run holds an advisory lock (`flock`) on that directory until the run finishes or fails (or the
process ends, SIGKILL included), so a second process (a scheduler restarting a job that still runs) is
refused instead of writing beside it. The lock itself, and how readers (`image_classifier_runs list`) ask
about it without disturbing a writer, is `locking.py`'s; on a network file system the run gets a warning
that a second process on another host is not excluded.

Nothing here imports torch at module level: reading runs (the `runs` command) needs no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.durable_files import fsync_path, replace_atomically, strict_json
from image_classifier.errors import RunDirectoryError
from image_classifier.locking import DirectoryLock, is_locked, lock_directory, warn_if_lock_is_local

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


class RunDirectory:
    """One run's folder. Use it as a context manager: the lock taken by `create` or `open_for_resume` is
    released when the block ends, however it ends, so the same process can try again (`--resume`)."""

    def __init__(self, run_dir: Path) -> None:
        self.final_dir = run_dir
        self.work_dir = run_dir.with_name(run_dir.name + INCOMPLETE_SUFFIX)
        self._lock: DirectoryLock | None = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Let go of the run's lock (a no-op when none is held)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- before any work ---

    def check_can_start(self) -> None:
        if self.final_dir.exists():
            self._remove_spare_checkpoint()
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
            self._remove_spare_checkpoint()
            raise RunDirectoryError(
                f"run {self.final_dir} is complete; a completed run cannot be resumed or overwritten"
            )
        if not self.work_dir.is_dir():
            raise RunDirectoryError(f"nothing to resume: no unfinished run in {self.work_dir}")
        self.release()  # a second call on this object must not hold two descriptors
        warn_if_lock_is_local(self.work_dir, "or resume this run")
        self._lock = lock_directory(self.work_dir)
        if self._lock is None:
            raise RunDirectoryError(f"another process is running {self.work_dir} right now; it cannot be resumed")
        self._remove_temporaries()
        try:
            return self.load_checkpoint()
        except BaseException:
            self.release()
            raise

    def _remove_temporaries(self) -> None:
        """Drop what writers killed inside a write left (see `_replace_atomically`). With the run's lock held,
        every temporary here is a dead writer's, even one named for a process id that lives on this host
        (the killed trainer's id in another container), which `durable_files` has to leave alone."""
        for temporary in self.work_dir.glob(".*.tmp"):
            if temporary.is_file():
                temporary.unlink(missing_ok=True)

    def _remove_spare_checkpoint(self) -> None:
        """Drop the checkpoint a run killed between its final rename and the checkpoint's removal left in its
        completed folder (see `finish`), so that running the same command again leaves exactly its outputs.
        Only once no process holds the folder (the publisher keeps its lock across the rename) and its
        run.json says completed."""
        spare = self.final_dir / CHECKPOINT_FILE
        if not spare.is_file() or is_locked(self.final_dir):
            return
        try:
            completed = read_json(self.final_dir / RUN_FILE).get("status") == "completed"
        except (OSError, ValueError, AttributeError):
            return
        if completed:
            spare.unlink(missing_ok=True)
            logger.info("removed the spare checkpoint of completed run %s", self.final_dir)

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
        warn_if_lock_is_local(parent, "this run")
        self.release()
        try:
            # Between mkdir and this lock the folder is unlocked: a second start of this run may take it for
            # an abandoned one, and lock it (None here) or have removed it already (FileNotFoundError).
            try:
                self._lock = lock_directory(staging)
            except FileNotFoundError:
                self._lock = None
            if self._lock is None:
                raise RunDirectoryError(f"another process started {self.work_dir} at the same time")
            try:
                self._save_checkpoint_in(staging, checkpoint)
                self._write_json_in(staging, RUN_FILE, manifest)
                fsync_path(staging)
            except OSError as exc:  # a full disk; or a second start of this run removed our staging folder
                raise RunDirectoryError(f"cannot create {self.work_dir}: {exc.strerror or exc}") from None
            try:
                # rename() refuses a non-empty target: of two processes starting the same run, one wins.
                os.rename(staging, self.work_dir)
            except OSError:
                raise RunDirectoryError(f"another process started {self.work_dir} at the same time") from None
        except BaseException:
            # A failed start (disk full, a lost race) leaves nothing behind and holds nothing.
            self.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_path(parent)

    def _remove_abandoned_staging(self) -> None:
        # What a process killed while creating this run left behind; a live one still holds its lock.
        for staging in self.work_dir.parent.glob(f"{self.final_dir.name}{STAGING_MARKER}*"):
            lock = lock_directory(staging)
            if lock is not None:
                shutil.rmtree(staging, ignore_errors=True)
                lock.release()

    # --- outputs ---

    def write_json(self, name: str, data: dict) -> None:
        self._write_json_in(self.work_dir, name, data)

    def save_model(self, state_dict: dict) -> str:
        """Write model.pth (CPU tensors, under its final name since its zip embeds it) and return its sha256."""
        import torch

        path = self.work_dir / MODEL_FILE
        path.unlink(missing_ok=True)  # a file of its own, never written through a link left there
        # contiguous: the notebook's layout, whatever layout (channels-last) the run trained in
        torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}, path)
        fsync_path(path)
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
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a checkpoint is written atomically, so this is damage from outside
            raise RunDirectoryError(f"cannot read checkpoint {path}: {exc}") from None
        if not isinstance(checkpoint, dict):  # replaced from outside by another file torch can read
            raise RunDirectoryError(f"{path} does not hold a checkpoint (a {type(checkpoint).__name__})")
        return checkpoint

    # --- the end ---

    def finish(self) -> Path:
        """Publish the run under its final name in one rename, drop the checkpoint, release the lock.

        In this order a kill in between leaves a complete run with a spare checkpoint (which the next start
        or resume of the same run removes), never an unfinished directory without one (which could neither
        be resumed nor restarted).
        """
        fsync_path(self.work_dir)  # the outputs' renames inside it reach the disk before it is published
        os.replace(self.work_dir, self.final_dir)
        fsync_path(self.final_dir.parent)
        (self.final_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        self.release()
        return self.final_dir

    # --- writing one file ---

    def _save_checkpoint_in(self, directory: Path, checkpoint: dict) -> None:
        import torch

        def write(temporary: Path) -> None:
            # torch.save embeds the stem of the file it writes in the archive: saved under a name of its own
            # first (the run's lock keeps it to one writer), a checkpoint's bytes never hold the process id.
            named = directory / f".{CHECKPOINT_FILE}.tmp"
            named.unlink(missing_ok=True)  # a fixed name: never write through a link left there by someone else
            try:
                torch.save(checkpoint, named)
                os.replace(named, temporary)
            finally:
                named.unlink(missing_ok=True)  # a failed save (a full disk) leaves nothing half-written

        self._replace_atomically(directory, CHECKPOINT_FILE, write)

    def _write_json_in(self, directory: Path, name: str, data: dict) -> None:
        text, replaced = strict_json(data)
        if replaced:
            logger.warning("%s: not a finite number, written as null: %s", name, ", ".join(replaced))
        self._replace_atomically(directory, name, lambda path: path.write_text(text, "utf-8"))

    @staticmethod
    def _replace_atomically(directory: Path, name: str, write: Callable[[Path], None]) -> None:
        # One seam for every output written in place (the fault-injection tests kill the trainer here).
        replace_atomically(directory / name, write)
