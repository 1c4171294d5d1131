"""`image_classifier_serve --workers N`: N processes serving one port, each with its own model and batcher.

The supervisor (the command's own process) binds the port once and forks the workers before anything heavy is
imported: no torch, no event loop, no thread exists yet in it, so the fork copies only parsed arguments (the
token among them, which thus never travels through an argument list, a pipe or a file). Every worker inherits
the one listening socket and accepts from it: a connection waits in the kernel's single queue until some live
worker takes it, so a dead or busy worker is never handed connections (SO_REUSEPORT would give each worker a
queue of its own, hashed to, that dies with it; and a second service started on the same port by mistake
would silently share it instead of failing). Each worker takes one connection per turn of its event loop
(asyncio would otherwise accept every waiting one at once): a burst of clients connecting together spreads
over the workers instead of landing on whichever woke first, and keeps there (keep-alive).

Signals go to the supervisor (the workers run in process groups of their own, so that a terminal's Ctrl-C
reaches them once, through it): SIGHUP is passed to every worker, each of which re-resolves its alias and hot
swaps as a single service does; SIGTERM and SIGINT are passed on too, each worker stops gracefully, and the
supervisor exits 0 once all have. `--reload_every` runs in each worker.

A worker that exits on its own (the inference worker died, the kernel's OOM killer, a crash) fails the whole
service loudly: the supervisor logs it, stops the other workers gracefully (their `/ready` answers 503 from
that moment, their requests in flight are answered) and exits 1, for the supervisor above it (systemd,
Docker's restart policy, Kubernetes) to restart the service whole, as with one worker. A worker restarted in
place would re-resolve a `models:/NAME@ALIAS` on its own, and could serve another version, even other
classes, than its siblings. If the supervisor itself is killed, the kernel sends SIGTERM to every worker.

uvicorn's own multi-process supervisor was not used: its SIGHUP replaces every worker by a fresh process
(a cold start that resolves the alias anew, without the class-change check against the served version), not
the hot swap, and it needs the application as an import string, rebuilt from pickled settings in a spawned
process: the token would have to be pickled, which `Secret` refuses.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from image_classifier.errors import UserError
from image_classifier.serving.settings import ServeSettings

logger = logging.getLogger(__name__)

PASSED_ON = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
WATCHED = {*PASSED_ON, signal.SIGCHLD}
# After --graceful_timeout a worker has answered or dropped everything; this is for a worker that hangs.
KILL_MARGIN_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LISTEN_BACKLOG = 2048  # uvicorn's default: connections the kernel queues before any worker accepts them
# asyncio passes create_server's backlog both to listen() and as the most connections accepted per readiness
# event: the workers' servers get 1, and SharedListener keeps the kernel's queue at LISTEN_BACKLOG.
ACCEPTS_PER_TURN = 1

# serve(settings, listener, worker) -> exit status, run in each worker
ServeOne = Callable[[ServeSettings, socket.socket, int], int]


class ListenError(UserError):
    """The port cannot be bound (in use, not permitted, an address this machine does not have)."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket that every worker shares, bound as uvicorn binds its own. It starts listening when
    the first worker serves (asyncio calls listen()): until then a client is refused, not kept waiting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP. Without it,
    # Nagle's algorithm and delayed ACKs held every keep-alive answer about 40 ms.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.set_inheritable(True)
    return listener


def worker_backlog() -> int:
    """The backlog a worker's uvicorn passes to create_server: ACCEPTS_PER_TURN on asyncio's event loop. uvicorn
    runs uvloop instead when it is installed (not in our lock files), whose libuv calls listen() itself, past
    SharedListener: there a backlog of 1 would shrink the shared queue, so the full one is kept (and a burst of
    connections may then land on one worker)."""
    return LISTEN_BACKLOG if importlib.util.find_spec("uvloop") is not None else ACCEPTS_PER_TURN


class SharedListener(socket.socket):
    """The inherited listening socket, as a worker hands it to uvicorn: listen() keeps the shared queue's length
    whatever backlog asyncio passes (ACCEPTS_PER_TURN)."""

    @classmethod
    def of(cls, listener: socket.socket) -> SharedListener:
        return cls(listener.family, listener.type, listener.proto, fileno=listener.detach())

    def listen(self, backlog: int | None = None) -> None:
        super().listen(LISTEN_BACKLOG)


def supervise(settings: ServeSettings, serve_one: ServeOne) -> int:
    """Fork `settings.workers` workers serving one port; pass signals on; 0 once all stopped after SIGTERM or
    SIGINT, 1 if a worker ended on its own (the others are then stopped) or did not stop in time."""
    listener = bind(settings.host, settings.port)
    # Blocked from before the first fork: a signal is never lost, and never runs a handler meant for the other
    # side of a fork. The supervisor takes them synchronously (sigtimedwait), the workers unblock them.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    workers: dict[int, int] = {}  # pid -> worker number (1..N)
    try:
        for number in range(1, settings.workers + 1):
            pid = os.fork()
            if pid == 0:
                _become_worker(settings, serve_one, listener, number, previous_mask)  # never returns
            workers[pid] = number
        port = listener.getsockname()[1]  # the one chosen for --port 0
        # The workers hold it now; once they all close it, the port stops listening.
        listener.close()
        logger.info(
            "supervisor %d: %d workers (pids %s) serving %s:%d",
            os.getpid(),
            len(workers),
            ", ".join(str(pid) for pid in workers),
            settings.host,
            port,
        )
        return _watch(workers, settings.graceful_timeout)
    finally:
        listener.close()
        for pid in workers:  # only if the supervisor itself failed: never leave a worker behind
            _signal(pid, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _become_worker(
    settings: ServeSettings, serve_one: ServeOne, listener: socket.socket, number: int, mask: set
) -> None:
    """The forked child: a service like the single-process one, on the shared socket; exits, never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the supervisor only, which passes it on once
        _stop_when_the_supervisor_dies()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # until uvicorn installs its own: a stop while loading ends it
        # SIGHUP keeps the handler inherited from the command's first line (HangupsDuringStartup).
        _name_log_lines(number)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = serve_one(settings, SharedListener.of(listener), number)
    except BaseException:  # noqa: B036 - whatever happens, this process must not go back to the supervisor's code
        logger.exception("worker %d failed", number)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop_when_the_supervisor_dies() -> None:
    """Linux: SIGTERM to this worker when its parent dies (killed with SIGKILL, say): no worker outlives it."""
    if not sys.platform.startswith("linux"):
        return
    supervisor = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _name_log_lines(number: int) -> None:
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            handler.setFormatter(
                logging.Formatter(f"%(asctime)s %(levelname)s worker {number} %(name)s: %(message)s", "%H:%M:%S")
            )


def _watch(workers: dict[int, int], graceful_timeout: float) -> int:
    stopping = False
    failed = False
    kill_at: float | None = None
    while workers:
        received = signal.sigtimedwait(WATCHED, 1.0)
        if received is not None and received.si_signo in PASSED_ON:
            name = signal.Signals(received.si_signo).name
            if received.si_signo == signal.SIGHUP:
                logger.info("SIGHUP: passed to the %d workers", len(workers))
            elif not stopping:
                stopping = True
                kill_at = time.monotonic() + graceful_timeout + KILL_MARGIN_S
                logger.info("%s: stopping the %d workers", name, len(workers))
            for pid in workers:
                _signal(pid, received.si_signo)
        for pid, status in _ended():
            number = workers.pop(pid, None)
            if number is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            if not stopping:
                failed = True
                stopping = True
                kill_at = time.monotonic() + graceful_timeout + KILL_MARGIN_S
                logger.critical(
                    "worker %d (pid %d) %s: stopping the service (exit status 1) for its supervisor to restart it",
                    number,
                    pid,
                    how,
                )
                for other in workers:
                    _signal(other, signal.SIGTERM)
            elif code in (0, -signal.SIGTERM, -signal.SIGINT):  # the latter: stopped while still starting
                logger.debug("worker %d (pid %d) %s", number, pid, how)
            else:
                failed = True
                logger.error("worker %d (pid %d) %s while stopping", number, pid, how)
        if kill_at is not None and time.monotonic() > kill_at and workers:
            failed = True
            logger.error("workers %s still running past --graceful_timeout: killed", sorted(workers.values()))
            for pid in workers:
                _signal(pid, signal.SIGKILL)
            kill_at = None
    logger.info("stopped")
    return 1 if failed else 0


def _ended() -> list[tuple[int, int]]:
    """(pid, wait status) of every child that has ended since the last call."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:  # ended already; reaped on the next turn
        pass
