"""Writing the tracking code's own files (the registry): strict JSON, atomic replacement."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from image_classifier.run_dir import finite_json


def to_strict_json(data) -> str:
    """JSON that every parser accepts: NaN and infinities (which older versions wrote into run files) become
    null, as the trainer writes them today."""
    return json.dumps(finite_json(data)[0], indent=4, allow_nan=False) + "\n"


def write_json_atomically(path: Path, data) -> None:
    """Write a sibling, fsync it, rename it over `path`, fsync the folder: a crash leaves the old or the new
    file, never half of one. The caller serialises writers (see `image_classifier.locking`). A temporary sibling of
    a process that no longer exists is what a writer killed mid-write left behind: it is removed."""
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _process_exists(int(pid)):
            leftover.unlink(missing_ok=True)
    temporary = path.with_name(f"{prefix}{os.getpid()}.tmp")
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


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, and another user's
        return True
    return True
