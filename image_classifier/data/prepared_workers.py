"""The worker processes that hash and decode an image folder: a forked pool (or none for small work), tasks
submitted a bounded window at a time, and the progress bar they advance.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator

from tqdm import tqdm

from image_classifier.errors import DatasetError

TASKS_IN_FLIGHT_PER_PROCESS = 4  # bounds what waits in the pipes (a chunk's results are a few KB)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


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


def chunks(items: list, size: int) -> Iterator[list]:
    """`items` in tasks of `size`: one task's results travel back through a pipe at once."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def processes_for(count: int, chunk: int) -> int:
    """One process per chunk of work, at most one per core: a small folder is not worth forking for."""
    return max(1, min(available_cores(), -(-count // chunk)))


def _progress_bar(total: int, description: str) -> tqdm:
    # disable=None: no bar when stderr is not a terminal (CI, Docker, a log file).
    return tqdm(total=total, desc=description, unit="file", leave=False, disable=None, smoothing=0.1)


@contextlib.contextmanager
def worker_results(
    function: Callable, tasks: Iterable[tuple], processes: int, total: int, description: str
) -> Iterator[Iterator]:
    """The results of `function(*task)` for every task, run in `processes` workers (or here, for one), as they
    complete; the progress bar counts `total` files under `description`, advanced by each result's length.

    A context manager, not a generator: whatever ends the caller's loop (an error, Ctrl-C) stops the pool at
    once, on leaving the `with`, and a worker killed by the system is one DatasetError.
    """
    with _pool(processes) as executor, _progress_bar(total, description) as bar:
        yield _advancing(bar, _run_tasks(executor, function, tasks, processes * TASKS_IN_FLIGHT_PER_PROCESS))


def _advancing(bar: tqdm, results: Iterator[list]) -> Iterator[list]:
    for result in results:
        bar.update(len(result))
        yield result
