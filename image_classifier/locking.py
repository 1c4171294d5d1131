"""The package's one inter-process lock: an advisory `flock` on a sibling lock file.

Used by the registry's writers (tracking/) and by whoever prepares an image folder (data/prepared.py).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an advisory `flock` on `lock_path` (created if missing); the kernel drops it if the process dies.

    The lock is on a sibling file, not on the document itself, because the document is replaced by rename
    and a lock on a replaced inode would no longer exclude anyone. `on_wait` is called once if another
    process holds the lock, before waiting for it (to say why nothing happens).
    """
    with lock_path.open("a") as stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
