"""Writing the tracking code's own files (the registry): strict JSON, atomic replacement, a writers' lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from image_classifier.run_dir import finite_json


def to_strict_json(data) -> str:
    """JSON that every parser accepts: NaN and infinities (which older versions wrote into run files) become
    null, as the trainer writes them today."""
    return json.dumps(finite_json(data)[0], indent=4, allow_nan=False) + "\n"


def write_json_atomically(path: Path, data) -> None:
    """Write a sibling, fsync it, rename it over `path`, fsync the folder: a crash leaves the old or the new
    file, never half of one. The caller serialises writers (see `exclusive_lock`)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as stream:
            stream.write(to_strict_json(data))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an advisory `flock` on `lock_path` (created if missing); the kernel drops it if the process dies.

    The lock is on a sibling file, not on the document itself, because the document is replaced by rename
    and a lock on a replaced inode would no longer exclude anyone.
    """
    with lock_path.open("a") as stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
