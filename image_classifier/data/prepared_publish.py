"""Publishing a prepared dataset: decode the folder into `<key>.tmp-<host>-<pid>/` under the key's lock, then
rename it to `<key>/` once complete and flushed to disk, so that a run killed at any point leaves a temporary
folder (removed by the next preparer on that host), never a `<key>/` that is half written.

Worker processes write their rows straight into the memory-mapped images.npy, a chunk of files at a time, so
the memory used is a few chunks of images whatever the folder's size; the bad images' rows are compacted
away afterwards, and the manifest is written last.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_classifier.data import prepared_decoding
from image_classifier.data.folder import FolderScan
from image_classifier.data.prepared_keys import (
    CACHE_FORMAT,
    IMAGES_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    TEMPORARY_MARKER,
    dataset_sha256,
    is_complete,
    manifest_row,
)
from image_classifier.data.prepared_workers import chunks, processes_for, worker_results
from image_classifier.durable_files import fsync_path, to_strict_json
from image_classifier.errors import DatasetError

logger = logging.getLogger(__name__)

DECODE_CHUNK = 64  # files per task while decoding: big enough to amortise a task, small for the bar
COPY_ROWS_BYTES = 64 << 20  # compacting copies this much at a time


@dataclass(frozen=True)
class Job:
    """What decoding a folder into a prepared dataset needs."""

    scan: FolderScan
    hashes: list[str | None]
    unreadable: dict[int, str]
    image_size: int
    max_pixels: int
    conversion: dict
    key: str
    processes: int | None
    on_progress: Callable[[int, int], None] | None


def build(job: Job, target: Path) -> None:
    """Decode into a temporary folder under the key's lock, then publish it as `target` in one rename."""
    parent = target.parent
    # Named by host too: where the cache is shared over a network file system, flock may exclude this host's
    # processes only, and another host may be preparing the same key beside us.
    mine = f"{job.key}{TEMPORARY_MARKER}{socket.gethostname()}-"
    for leftover in parent.glob(f"{mine}*"):  # a killed preparer's on this host; we hold the key's lock
        shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():  # damaged (no valid manifest): readers of the old one keep their open files
        shutil.rmtree(target, ignore_errors=True)
    work = parent / f"{mine}{os.getpid()}"
    work.mkdir()
    try:
        _write_prepared(job, work, target)
        os.rename(work, target)
    except OSError:
        if not is_complete(target, job.key):
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)  # another host published the same key first: the same bytes
    except BaseException:  # an error or Ctrl-C: nothing half-written stays (a SIGKILL's is removed next time)
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_path(parent)


def _write_prepared(job: Job, work: Path, target: Path) -> None:
    scan, hashes, unreadable, image_size = job.scan, job.hashes, job.unreadable, job.image_size
    started = time.monotonic()
    candidates = [index for index in range(len(scan.files)) if index not in unreadable]
    images_path = work / IMAGES_FILE
    shape = (len(candidates), 3, image_size, image_size)
    if candidates:
        np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape).flush()
        _reserve(images_path)
    processes = job.processes or processes_for(len(candidates), DECODE_CHUNK)
    logger.info(
        "preparing %d files of %s at %d x %d with %d process(es) into %s",
        len(candidates),
        scan.root,
        image_size,
        image_size,
        processes,
        target,
    )
    status: dict[int, tuple[str, str | None]] = {}
    items = [(row, scan.files[index].path, hashes[index]) for row, index in enumerate(candidates)]
    tasks = (
        (str(images_path), str(scan.root), image_size, job.max_pixels, chunk) for chunk in chunks(items, DECODE_CHUNK)
    )
    with worker_results(prepared_decoding.decode_chunk, tasks, processes, len(items), "preparing") as chunk_results:
        for results in chunk_results:
            for row, outcome, reason in results:
                status[row] = (outcome, reason)
            if job.on_progress is not None:
                job.on_progress(len(status), len(items))
    changed = sorted(scan.files[candidates[row]].path for row, (outcome, _) in status.items() if outcome == "changed")
    if changed:
        raise DatasetError(f"files changed while the dataset was being prepared: {', '.join(changed)}; run again")
    good = [row for row in range(len(candidates)) if status[row][0] == "ok"]
    if not good:  # numpy cannot map an array without elements
        np.save(images_path, np.zeros((0, *shape[1:]), dtype=np.uint8))
    elif len(good) < len(candidates):
        _compact(images_path, good, shape)
    files = scan.files
    rows = [manifest_row(files[candidates[row]], hashes[candidates[row]]) for row in good]
    bad = [{"path": files[index].path, "sha256": None, "reason": reason} for index, reason in unreadable.items()]
    bad += [
        {"path": files[candidates[row]].path, "sha256": hashes[candidates[row]], "reason": reason}
        for row, (outcome, reason) in status.items()
        if outcome == "bad"
    ]
    not_images = [
        {"path": files[candidates[row]].path, "sha256": hashes[candidates[row]]}
        for row, (outcome, _) in status.items()
        if outcome == "not_image"
    ]
    np.save(work / LABELS_FILE, np.array([row["label"] for row in rows], dtype=np.int64))
    manifest = {
        "format": CACHE_FORMAT,
        "key": job.key,
        "dataset_sha256": dataset_sha256(scan, hashes),
        "source": str(scan.root),
        "conversion": job.conversion,
        "classes": list(scan.classes),
        "layout": scan.layout,
        "shape": [len(rows), 3, image_size, image_size],
        "rows": rows,
        "bad_images": sorted(bad, key=lambda item: item["path"]),
        "not_images": sorted(not_images, key=lambda item: item["path"]),
        "seconds": round(time.monotonic() - started, 3),
    }
    for name in (IMAGES_FILE, LABELS_FILE):
        fsync_path(work / name)
    # last: a folder with a valid manifest is complete
    (work / MANIFEST_FILE).write_text(to_strict_json(manifest, indent=1, sort_keys=True), encoding="utf-8")
    fsync_path(work / MANIFEST_FILE)
    fsync_path(work)
    logger.info(
        "prepared %d images (%d bad, %d not images) in %.1f s: %.0f files/s",
        len(rows),
        len(bad),
        len(not_images),
        manifest["seconds"],
        len(items) / max(manifest["seconds"], 1e-9),
    )


def _reserve(path: Path) -> None:
    """Allocate every block of the (sparse) array file now. Pixels are written through a memory mapping, and
    a mapped page that finds the disk full is a SIGBUS that kills the writer (the run itself, or a worker:
    a traceback about a broken pool), never an error: reserved here, a full disk is an OSError, said in
    one line by `prepare`."""
    if not hasattr(os, "posix_fallocate"):  # macOS: the mapping's writes are the only way to know
        return
    descriptor = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(descriptor, 0, os.fstat(descriptor).st_size)
    finally:
        os.close(descriptor)


def _compact(images_path: Path, good: list[int], shape: tuple[int, ...]) -> None:
    """Rewrite `images_path` with the `good` rows only, a bounded number of rows at a time."""
    source = np.load(images_path, mmap_mode="r")
    compact_path = images_path.with_name("compact.npy")
    target = np.lib.format.open_memmap(compact_path, mode="w+", dtype=np.uint8, shape=(len(good), *shape[1:]))
    _reserve(compact_path)
    step = max(1, COPY_ROWS_BYTES // max(1, int(np.prod(shape[1:]))))
    for start in range(0, len(good), step):
        target[start : start + step] = source[good[start : start + step]]
    target.flush()
    del source, target
    os.replace(compact_path, images_path)
