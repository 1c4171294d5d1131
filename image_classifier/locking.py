"""The package's one place for inter-process locks: advisory `flock`, in the two ways the package needs it.

- `exclusive_lock`: wait for a sibling lock file (the registry's writers in tracking/, whoever prepares an
  image folder in data/prepared.py).
- `lock_directory` / `is_locked`: take, or ask about, a directory's lock without waiting (a run directory,
  held by the process that runs it; asked about by `image_classifier_runs list`).

`flock` is per machine on network file systems (NFS with `local_lock`, CIFS/SMB, most FUSE file systems):
`warn_if_lock_is_local` says so where it matters.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image_classifier.file_systems import file_system_type, is_network_file_system

logger = logging.getLogger(__name__)

# A writer that finds the lock taken retries this long before it concludes that another process holds it:
# where readers cannot see locks without taking one (no /proc/locks), their probe holds it for microseconds.
LOCK_RETRY_SECONDS = 1.0
# flock errors that mean "this file system cannot lock" (NFS without a lock manager, or one that turns flock
# into POSIX locks and so refuses an exclusive lock on a read-only descriptor), not "somebody holds it".
_CANNOT_LOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL, errno.ENOSYS)
PROC_LOCKS = Path("/proc/locks")


def _try_flock(fd: int, operation: int) -> bool:
    """Take `operation` (LOCK_EX or LOCK_SH) on `fd` without waiting: False if another process holds it.

    Any other failure (a file system that cannot lock) is raised, for the caller to judge.
    """
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an advisory `flock` on `lock_path` (created if missing); the kernel drops it if the process dies.

    The lock is on a sibling file, not on the document itself, because the document is replaced by rename
    and a lock on a replaced inode would no longer exclude anyone. `on_wait` is called once if another
    process holds the lock, before waiting for it (to say why nothing happens).
    """
    with lock_path.open("a") as stream:
        if not _try_flock(stream.fileno(), fcntl.LOCK_EX):
            if on_wait is not None:
                on_wait()
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)


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
            if _try_flock(fd, fcntl.LOCK_EX):
                return DirectoryLock(directory, fd)
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
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.01)


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
        return not _try_flock(fd, fcntl.LOCK_SH)
    except OSError:
        return False  # no locks on this file system: nobody can hold one
    finally:
        os.close(fd)


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
