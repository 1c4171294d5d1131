"""Decode an image folder once, on every core, into numpy files that training memory-maps.

A prepared dataset is a folder `<cache>/<key>/` that any tool reads (`np.load(..., mmap_mode="r")`):
- `images.npy`: uint8, N x 3 x S x S (R, G, B planes), each image converted by `image_classifier.images`;
- `labels.npy`: int64, N;
- `manifest.json`: the key, the conversion settings, the classes, and for each row its file's path,
  sha256, label and layout split; then the bad images (path, sha256, reason) and the files that are not
  images.
Rows follow the files' sorted paths. The cache folder is `--cache_folder`, else $IMAGE_CLASSIFIER_CACHE,
else `$XDG_CACHE_HOME/image_classifier/prepared` (`~/.cache/image_classifier/prepared`): never the dataset
folder, which is only read.

The key is a sha256 over every file's content hash, path, label and split, the classes and the conversion
settings (image size, rule version, pixel limit, Pillow's version): a changed, added or removed file, or
another image size, gives a new key; the same files reuse the prepared data without decoding any.

Preparing runs under an exclusive lock on `<key>.lock`, so concurrent runs and the ranks of a torchrun job
decode the folder once: the others wait and then reuse it. It is written into `<key>.tmp-<host>-<pid>/` and
renamed to `<key>/` when complete and flushed to disk: a run killed at any point leaves a temporary folder
that the next preparer on that host removes, never a `<key>/` that is half written. Worker processes write
their rows straight into the memory-mapped `images.npy`, a chunk of files at a time, so the memory used is
a few chunks of images whatever the folder's size; a file larger than any allowed image could be
(`max_file_bytes`) is never read whole, only its first bytes.

A reused prepared dataset is checked against the scan before training reads it (`_open`): its rows, labels,
dtypes and shapes must be those of the scanned files, so a damaged or edited cache is refused. Its pixels are
taken on trust (checking them means decoding again): the cache folder should be writable by its users only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from image_classifier.data.folder import NOT_IMAGE, FolderScan, dataset_sha256
from image_classifier.durable_files import fsync_path, to_strict_json
from image_classifier.errors import DatasetError, ImageError
from image_classifier.images import DEFAULT_MAX_PIXELS, FILE_SUFFIXES, conversion_settings, decode_image, open_image
from image_classifier.locking import exclusive_lock

logger = logging.getLogger(__name__)

CACHE_ENV = "IMAGE_CLASSIFIER_CACHE"
CACHE_FORMAT = 1
IMAGES_FILE, LABELS_FILE, MANIFEST_FILE = "images.npy", "labels.npy", "manifest.json"
TEMPORARY_MARKER = ".tmp-"
# Suffixes that promise an image: such a file that does not decode is a bad image, never skipped quietly.
IMAGE_SUFFIXES = frozenset(
    FILE_SUFFIXES
    + (".jpe", ".jfif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".ico", ".ppm", ".pgm", ".pbm", ".pnm")
    + (".tga", ".jp2", ".psd", ".dng", ".cr2", ".nef", ".arw", ".raw", ".svg", ".apng")
)
HEADER_BYTES = 1 << 16  # what identifies an image's format and declared size (`_judge_oversized`)
HASH_CHUNK = 256  # files per task while hashing: each task is a few milliseconds of reading
DECODE_CHUNK = 64  # files per task while decoding: big enough to amortise a task, small for the bar
TASKS_IN_FLIGHT_PER_PROCESS = 4  # bounds what waits in the pipes (a chunk's results are a few KB)
COPY_ROWS_BYTES = 64 << 20  # compacting copies this much at a time


def default_cache_folder() -> Path:
    """$IMAGE_CLASSIFIER_CACHE, else $XDG_CACHE_HOME/image_classifier/prepared, else ~/.cache/..."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "image_classifier" / "prepared"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset, memory-mapped: `images` and `labels` are read from disk as they are indexed."""

    folder: Path
    key: str
    dataset_sha256: str
    images: np.ndarray  # uint8 N x 3 x S x S, mapped copy-on-write (never written back)
    labels: np.ndarray  # int64 N
    rows: list[dict]  # per row: path, sha256, label, split
    bad_images: list[dict]  # path, sha256, reason
    not_images: list[dict]  # path, sha256
    conversion: dict
    reused: bool


# --- worker processes ---------------------------------------------------------------------------------------


def _worker_init(parent: int) -> None:
    # Ctrl-C goes to the whole process group: the main process stops the pool; workers need no traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # Die with the parent even when it is SIGKILLed: a forked worker holds copies of its descriptors,
        # the run directory's and the cache's locks among them, and must not keep them alive.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


@contextlib.contextmanager
def _pool(processes: int) -> Iterator[concurrent.futures.Executor | None]:
    """A process pool, or None to work in this process.

    Forked on Linux: quick to start, and it needs nothing of the main module (a fork server or spawn would
    run the caller's script again in every worker). Workers only read files and run Pillow and numpy, never
    torch. Elsewhere (macOS) spawned, as forking there is unsafe.
    """
    if processes <= 1:
        yield None
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    executor = concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(os.getpid(),)
    )
    try:
        yield executor
    except concurrent.futures.process.BrokenProcessPool:
        raise DatasetError(
            "a worker process reading the images died (killed by the system: out of memory?); nothing prepared "
            "is used: free some memory and run again"
        ) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _run_tasks(executor, function: Callable, tasks: Iterable[tuple], window: int) -> Iterator:
    """Results of `function(*task)` as they complete, with at most `window` tasks submitted at a time."""
    if executor is None:
        for task in tasks:
            yield function(*task)
        return
    pending: set[concurrent.futures.Future] = set()
    for task in tasks:
        pending.add(executor.submit(function, *task))
        if len(pending) >= window:
            done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                yield future.result()
    for future in concurrent.futures.as_completed(pending):
        yield future.result()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _hash_chunk(root: str, items: list[tuple[int, str]]) -> list[tuple[int, str | None, str | None]]:
    results = []
    for index, path in items:
        digest = hashlib.sha256()
        try:
            with open(os.path.join(root, path), "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            results.append((index, None, f"cannot read it: {exc.strerror or exc}"))
            continue
        results.append((index, digest.hexdigest(), None))
    return results


def _judge(path: str, payload: bytes, image_size: int, max_pixels: int) -> tuple[str, np.ndarray | str | None]:
    """("ok", pixels), ("bad", reason) or ("not_image", None), by the bytes (and the suffix's promise)."""
    promises_image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES
    if not payload:
        return ("bad", "empty file (0 bytes)") if promises_image else ("not_image", None)
    try:
        return "ok", decode_image(payload, max_pixels, image_size)
    except ImageError as exc:
        if exc.status == 415 and not promises_image:
            return "not_image", None
        return "bad", str(exc)


def max_file_bytes(max_pixels: int) -> int:
    """The largest file that is read whole to be decoded: 8 bytes per pixel of the largest image allowed (a
    16-bit RGBA PNG stored uncompressed) and 64 MB of metadata. Anything larger (a video beside the photos of a
    phone's export, a disk image) is judged by its first bytes only: holding it whole would take its size in
    memory, in every worker at once."""
    return max_pixels * 8 + (64 << 20)


def _judge_oversized(path: str, header: bytes, size: int, max_pixels: int) -> tuple[str, str | None]:
    """("bad", reason) or ("not_image", None) for a file too large to read whole, by its suffix and header."""
    promises_image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES
    try:
        open_image(header, max_pixels).close()
    except ImageError as exc:
        if exc.status == 415 and not promises_image:
            return "not_image", None
    return "bad", f"a file of {size:,} bytes, more than any image of at most {max_pixels:,} pixels would take"


def _decode_chunk(
    images_path: str, root: str, image_size: int, max_pixels: int, items: list[tuple[int, str, str]]
) -> list[tuple[int, str, str | None]]:
    """Decode `items` (row, path, expected sha256) into their rows of the mapped `images_path`."""
    images = np.load(images_path, mmap_mode="r+")
    results = []
    for row, path, expected in items:
        try:
            with open(os.path.join(root, path), "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                if size > max_file_bytes(max_pixels):
                    results.append((row, *_judge_oversized(path, stream.read(HEADER_BYTES), size, max_pixels)))
                    continue
                payload = stream.read()
        except OSError as exc:
            results.append((row, "bad", f"cannot read it: {exc.strerror or exc}"))
            continue
        if hashlib.sha256(payload).hexdigest() != expected:
            results.append((row, "changed", None))
            continue
        status, value = _judge(path, payload, image_size, max_pixels)
        if status == "ok":
            images[row] = value
            value = None
        results.append((row, status, value))
    images.flush()
    return results


# --- hashing ----------------------------------------------------------------------------------------------


def _progress_bar(total: int, description: str) -> tqdm:
    # disable=None: no bar when stderr is not a terminal (CI, Docker, a log file).
    return tqdm(total=total, desc=description, unit="file", leave=False, disable=None, smoothing=0.1)


def hash_files(root: Path, paths: list[str], processes: int | None = None) -> tuple[list[str | None], dict[int, str]]:
    """Every file's sha256 (None where unreadable) and, by index, why a file could not be read."""
    processes = processes or _processes_for(len(paths), HASH_CHUNK)
    hashes: list[str | None] = [None] * len(paths)
    unreadable: dict[int, str] = {}
    tasks = ((str(root), chunk) for chunk in _chunks(list(enumerate(paths)), HASH_CHUNK))
    with _pool(processes) as executor, _progress_bar(len(paths), "hashing") as bar:
        for results in _run_tasks(executor, _hash_chunk, tasks, processes * TASKS_IN_FLIGHT_PER_PROCESS):
            for index, digest, problem in results:
                hashes[index] = digest
                if problem is not None:
                    unreadable[index] = problem
            bar.update(len(results))
    return hashes, unreadable


def _processes_for(count: int, chunk: int) -> int:
    return max(1, min(available_cores(), -(-count // chunk)))


# --- preparing --------------------------------------------------------------------------------------------


def cache_key(dataset_hash: str, conversion: dict) -> str:
    document = {"format": CACHE_FORMAT, "dataset_sha256": dataset_hash, "conversion": conversion}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def prepare(
    scan: FolderScan,
    hashes: list[str | None],
    unreadable: dict[int, str],
    image_size: int,
    cache_folder: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    processes: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """The prepared data of `scan` at `image_size`: reused when its key exists, else decoded now, once.

    `on_progress(done, total)` is told after each chunk of files is decoded (the bar shows the same).
    """
    cache_folder = (cache_folder or default_cache_folder()).absolute()
    _check_outside(cache_folder, scan.root)
    conversion = conversion_settings(image_size, max_pixels)
    dataset_hash = dataset_sha256(scan, hashes)
    key = cache_key(dataset_hash, conversion)
    try:
        cache_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the prepared-data cache {cache_folder}: {exc.strerror or exc}; choose a writable "
            f"folder with --cache_folder or ${CACHE_ENV}"
        ) from None
    target = cache_folder / key
    if not _is_complete(target, key):
        try:
            with exclusive_lock(cache_folder / f"{key}.lock", on_wait=lambda: _log_wait(target)):
                if not _is_complete(target, key):  # whoever held the lock may have prepared it meanwhile
                    job = _Job(
                        scan, hashes, unreadable, image_size, max_pixels, conversion, key, processes, on_progress
                    )
                    _build(job, target)
                    return _open(target, scan, hashes, dataset_hash, reused=False)
        except OSError as exc:  # a read-only or full disk: said as such, not as a traceback
            raise DatasetError(
                f"cannot write the prepared dataset into {cache_folder}: {exc.strerror or exc}; choose another "
                f"folder with --cache_folder or ${CACHE_ENV}"
            ) from None
    logger.info("reusing the prepared dataset %s", target)
    return _open(target, scan, hashes, dataset_hash, reused=True)


def _log_wait(target: Path) -> None:
    logger.info("another process is preparing %s: waiting for it", target)


def _check_outside(cache_folder: Path, root: Path) -> None:
    cache, dataset = os.path.realpath(cache_folder), os.path.realpath(root)
    if cache == dataset or cache.startswith(dataset.rstrip(os.sep) + os.sep):
        raise DatasetError(
            f"the prepared-data cache {cache_folder} is inside the dataset folder {root}, which is only ever "
            f"read: choose another with --cache_folder or ${CACHE_ENV}"
        )


def _is_complete(target: Path, key: str) -> bool:
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("key") == key and manifest.get("format") == CACHE_FORMAT


@dataclass(frozen=True)
class _Job:
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


def _build(job: _Job, target: Path) -> None:
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
        if not _is_complete(target, job.key):
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)  # another host published the same key first: the same bytes
    except BaseException:  # an error or Ctrl-C: nothing half-written stays (a SIGKILL's is removed next time)
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_path(parent)


def _write_prepared(job: _Job, work: Path, target: Path) -> None:
    scan, hashes, unreadable, image_size = job.scan, job.hashes, job.unreadable, job.image_size
    started = time.monotonic()
    candidates = [index for index in range(len(scan.files)) if index not in unreadable]
    images_path = work / IMAGES_FILE
    shape = (len(candidates), 3, image_size, image_size)
    if candidates:
        np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape).flush()
        _reserve(images_path)
    processes = job.processes or _processes_for(len(candidates), DECODE_CHUNK)
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
        (str(images_path), str(scan.root), image_size, job.max_pixels, chunk) for chunk in _chunks(items, DECODE_CHUNK)
    )
    with _pool(processes) as executor, _progress_bar(len(items), "preparing") as bar:
        for results in _run_tasks(executor, _decode_chunk, tasks, processes * TASKS_IN_FLIGHT_PER_PROCESS):
            for row, outcome, reason in results:
                status[row] = (outcome, reason)
            bar.update(len(results))
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
    rows = [_row(files[candidates[row]], hashes[candidates[row]]) for row in good]
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
    (work / MANIFEST_FILE).write_text(to_strict_json(manifest, indent=1), encoding="utf-8")
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


def _row(file, digest: str) -> dict:
    return {"path": file.path, "sha256": digest, "label": file.label, "split": file.split}


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


def _open(target: Path, scan: FolderScan, hashes: list[str | None], dataset_hash: str, reused: bool) -> PreparedData:
    """The prepared dataset in `target`, checked against the scan it was keyed by before training trusts it.

    Every row must be one of the scanned files with its hash, label and split, every scanned file must be a
    row, a bad image or a file that is not an image, `labels.npy` must hold the rows' labels as int64, and
    `images.npy` uint8 N x 3 x S x S at the key's size: a damaged or edited cache (a float array, other
    labels, rows of another folder) is refused, never trained on. Only the pixels themselves are taken on
    trust (checking them is decoding again): keep the cache folder writable by its users only.
    """
    damaged = f"the prepared dataset {target} is damaged or was changed"
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
        shape = [int(side) for side in manifest["shape"]]
        rows, bad_images, not_images = manifest["rows"], manifest["bad_images"], manifest["not_images"]
        conversion = manifest["conversion"]
        # Copy-on-write mapping: writable for torch without a copy, never written back to the cache.
        images = np.load(target / IMAGES_FILE, mmap_mode="c" if shape[0] else None)
        labels = np.load(target / LABELS_FILE)
        problem = _mismatch(scan, hashes, dataset_hash, manifest, shape, rows, bad_images, not_images, images, labels)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{damaged} ({_first_line(exc)}): delete it and run again") from None
    if problem is not None:
        raise DatasetError(f"{damaged} ({problem}): delete it and run again")
    return PreparedData(
        folder=target,
        key=manifest["key"],
        dataset_sha256=dataset_hash,
        images=images,
        labels=labels,
        rows=rows,
        bad_images=bad_images,
        not_images=not_images,
        conversion=conversion,
        reused=reused,
    )


def _mismatch(scan, hashes, dataset_hash, manifest, shape, rows, bad_images, not_images, images, labels) -> str | None:
    """What in a prepared dataset disagrees with the scan it is opened for, or None."""
    size = manifest["conversion"]["image_size"]
    if manifest.get("dataset_sha256") != dataset_hash or list(manifest.get("classes", ())) != list(scan.classes):
        return "its manifest is for other files or classes"
    if images.dtype != np.uint8 or list(images.shape) != [len(rows), 3, size, size] or shape != list(images.shape):
        return f"images.npy is {images.dtype} {list(images.shape)}, not uint8 {[len(rows), 3, size, size]}"
    if labels.dtype != np.int64 or labels.shape != (len(rows),):
        return f"labels.npy is {labels.dtype} {list(labels.shape)}, not int64 [{len(rows)}]"
    scanned = {file.path: (file, digest) for file, digest in zip(scan.files, hashes)}
    for row in rows:
        file, digest = scanned.get(row["path"], (None, None))
        if file is None or row != _row(file, digest):
            return f"row {row['path']!r} is not that scanned file"
    listed = [row["path"] for row in rows] + [item["path"] for item in (*bad_images, *not_images)]
    if len(listed) != len(scanned) or set(listed) != scanned.keys():
        return "it does not list every scanned file exactly once"
    if not np.array_equal(labels, np.array([row["label"] for row in rows], dtype=np.int64)):
        return "labels.npy is not the rows' labels"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def skipped_not_images(prepared: PreparedData) -> list[tuple[str, str]]:
    return [(item["path"], NOT_IMAGE) for item in prepared.not_images]
