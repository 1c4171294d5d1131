"""Writing files that survive a kill or a power cut: strict JSON, fsync, atomic replacement.

Every file the package writes in place (a run's outputs, the registry, a prepared-data manifest) goes through
here, so that "a crash leaves the old file or the new one, never half of one" holds in one place.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder's: the renames inside it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finite_json(value, where: str = "") -> tuple[object, list[str]]:
    """`value` with every NaN or infinite float replaced by None (strict JSON has neither), and where."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [f"{where or 'value'} ({value})"]
    if isinstance(value, dict):
        pairs = [(key, finite_json(item, f"{where}.{key}" if where else str(key))) for key, item in value.items()]
        return {key: item for key, (item, _) in pairs}, [place for _, (_, places) in pairs for place in places]
    if isinstance(value, (list, tuple)):
        items = [finite_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return [item for item, _ in items], [place for _, places in items for place in places]
    return value, []


def strict_json(data, indent: int = 4, sort_keys: bool = False) -> tuple[str, list[str]]:
    """JSON that every parser accepts, and the places of the NaN and infinities written as null (older
    versions wrote them into run files). ASCII only: a name that is not valid UTF-8 (kept by Python as
    surrogates) is written escaped."""
    finite, replaced = finite_json(data)
    return json.dumps(finite, indent=indent, allow_nan=False, sort_keys=sort_keys) + "\n", replaced


def to_strict_json(data, indent: int = 4, sort_keys: bool = False) -> str:
    return strict_json(data, indent, sort_keys)[0]


def replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Call `write` on a temporary sibling, fsync it, rename it over `target`.

    The caller serialises writers (see `image_classifier.locking`); the temporary name carries the process id
    all the same, since a lock on a network file system may hold on this host only. A temporary sibling of a
    process that no longer exists is what a writer killed mid-write left behind: it is removed.
    """
    prefix = f".{target.name}."
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _process_exists(int(pid)):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:  # housekeeping only (a folder of that name, another user's file): never the write's end
                pass
    temporary = target.with_name(f"{prefix}{os.getpid()}.tmp")
    # The name is guessable (`ps` shows the id): whatever sits there now (a planted symbolic link) is dropped
    # first, so `write` creates a file of its own instead of writing through a link.
    temporary.unlink(missing_ok=True)
    try:
        write(temporary)
        fsync_path(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomically(path: Path, data) -> None:
    """Strict JSON, replaced atomically, its folder synced: once this returns, the new file is on the disk."""
    text = to_strict_json(data)
    replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    fsync_path(path.parent)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except (ProcessLookupError, OverflowError):  # OverflowError: a number no process id can be
        return False
    except PermissionError:  # there, and another user's
        return True
    return True
