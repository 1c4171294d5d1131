"""The run directory: the one place that writes a run's files.

A run works in `<experiment>/<run>.incomplete/` and renames it to `<experiment>/<run>/` only when every output
is written, so a failed or interrupted run never leaves anything under the final name, and the unfinished
directory (with its checkpoint) is what `--resume` continues from.

The unfinished directory only ever appears complete with its first checkpoint and run.json: both are written
into a staging directory (`<run>.incomplete~staging-<pid>`) that is then renamed into place. Whoever runs or
resumes the run holds an advisory lock (`flock`) on that directory until the run finishes or fails (or the
process ends, SIGKILL included), so a second process (a scheduler restarting a job that still runs) is
refused instead of writing beside it. Readers (`image_classifier_runs list`) find out whether a run is held
from /proc/locks, and where that cannot tell (a holder in another pid namespace is left out of it) by trying
a shared lock for an instant, which a writer waits out: a writer never fails because somebody was listing.

`flock` is per machine on network file systems (NFS with `local_lock`, CIFS/SMB, most FUSE file systems):
there a run directory gets a warning that a second process on another host is not excluded.

Nothing here imports torch at module level: reading runs (the `runs` command) needs no torch.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.durable_files import fsync_path, replace_atomically, strict_json
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


# A writer that finds the lock taken retries this long before it concludes that another process holds it:
# where readers cannot see locks without taking one (no /proc/locks), their probe holds it for microseconds.
LOCK_RETRY_SECONDS = 1.0
# flock errors that mean "this file system cannot lock" (NFS without a lock manager, or one that turns flock
# into POSIX locks and so refuses an exclusive lock on a read-only descriptor), not "somebody holds it".
_CANNOT_LOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL, errno.ENOSYS)
# File systems whose locks may not reach other hosts. Cluster file systems with a distributed lock manager
# (gfs2, ocfs2) lock across hosts and are not listed.
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "gpfs", "beegfs", "fuse"}
)
# FUSE file systems that live on this machine (their locks are this kernel's): not warned about.
LOCAL_FUSE_FILE_SYSTEMS = frozenset({"fuseblk", "fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.squashfuse"})
MOUNT_INFO = Path("/proc/self/mountinfo")
PROC_LOCKS = Path("/proc/locks")


@dataclass
class DirectoryLock:
    """An exclusive `flock` on a directory, held until `release()` or the end of the process. `fd` is None
    where the file system cannot lock at all (a warning said so): then nothing is held."""

    directory: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_directory(directory: Path) -> DirectoryLock | None:
    """The exclusive lock on `directory`, or None if another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return DirectoryLock(directory, fd)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _CANNOT_LOCK:
                raise
            logger.warning(
                "cannot lock %s (%s: its file system does not support flock); nothing stops another process "
                "from working in it at the same time",
                directory,
                exc.strerror,
            )
            return DirectoryLock(directory, None)


def _listed_locks(directory: Path) -> bool | None:
    """Whether the kernel lists a lock on `directory` in /proc/locks (None where there is no such file).

    A listed lock is held; an unlisted one may be held all the same: /proc/locks leaves out the locks of
    processes that its pid namespace cannot see (a trainer in another container, seen from this one).
    """
    try:
        table = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    status = os.stat(directory)
    # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2147876 0 EOF": device as hex major:minor, then the inode.
    key = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    # A line with "->" is a process waiting for a lock, not holding one.
    return any(key in line.split() and "->" not in line for line in table.splitlines())


def is_locked(directory: Path) -> bool:
    """Whether a live process holds `directory`'s lock (runs in it) right now, in any pid namespace.

    A lock that /proc/locks lists is answered without touching it. Otherwise (not listed, which proves
    nothing across pid namespaces, or no /proc/locks) a shared lock is tried and let go at once: the
    flock itself is the same for every namespace, and a writer starting at that instant retries for
    LOCK_RETRY_SECONDS (see lock_directory), so the probe never makes it fail.
    """
    if _listed_locks(directory):
        return True
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks on this file system: nobody can hold one
    finally:
        os.close(fd)
    return False


def file_system_type(path: Path, mount_info: Path | None = None) -> str | None:
    """The type of the file system `path` lives on ("ext4", "nfs4", "fuse.sshfs"), from the kernel's mount
    table (`mount_info`, default /proc/self/mountinfo), matched by device number; None where that table
    cannot be read."""
    try:
        device = os.stat(path).st_dev
        lines = (mount_info or MOUNT_INFO).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue": the device is
        # the third field, the type follows the "-" that ends the optional fields.
        fields = line.split()
        if len(fields) > 2 and fields[2] == wanted and "-" in fields[3:]:
            after = fields.index("-", 3) + 1
            if after < len(fields):
                return fields[after]
    return None


def is_network_file_system(kind: str | None) -> bool:
    if kind is None or kind in LOCAL_FUSE_FILE_SYSTEMS:
        return False
    return kind in NETWORK_FILE_SYSTEMS or kind.split(".")[0] in NETWORK_FILE_SYSTEMS


def warn_if_lock_is_local(path: Path, what: str) -> None:
    """Warn when `path` is on a network file system, where a `flock` may exclude this host's processes only."""
    kind = file_system_type(path)
    if is_network_file_system(kind):
        logger.warning(
            "%s is on a network file system (%s): its lock may not be seen by other hosts, so never run %s "
            "from two machines at once",
            path,
            kind,
            what,
        )


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
        try:
            return self.load_checkpoint()
        except BaseException:
            self.release()
            raise

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
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a checkpoint is written atomically, so this is damage from outside
            raise RunDirectoryError(f"cannot read checkpoint {path}: {exc}") from None

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

        self._replace_atomically(directory, CHECKPOINT_FILE, lambda path: torch.save(checkpoint, path))

    def _write_json_in(self, directory: Path, name: str, data: dict) -> None:
        text, replaced = strict_json(data)
        if replaced:
            logger.warning("%s: not a finite number, written as null: %s", name, ", ".join(replaced))
        self._replace_atomically(directory, name, lambda path: path.write_text(text, "utf-8"))

    @staticmethod
    def _replace_atomically(directory: Path, name: str, write: Callable[[Path], None]) -> None:
        # One seam for every output written in place (the fault-injection tests kill the trainer here).
        replace_atomically(directory / name, write)
