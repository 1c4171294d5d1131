"""image_classifier_serve: real-time predictions over HTTP (FastAPI on uvicorn), batched on the server.

Copy-paste examples:

    image_classifier_serve --model experiments/local_exp_test/run_1
    curl -s -H 'Content-Type: image/png' --data-binary @cat.png http://127.0.0.1:8000/predict
    curl -s -F file=@cat.png http://127.0.0.1:8000/predict
    curl -s -F files=@cat.png -F files=@dog.jpg 'http://127.0.0.1:8000/predict/batch?top_k=1'
    SERVE_TOKEN=s3cret image_classifier_serve --model models:/cifar-net@production --reload_every 60
    kill -HUP <pid>    # re-resolve models:/cifar-net@production now; kill -TERM <pid> stops gracefully
    image_classifier_serve --model experiments/local_exp_test/run_1 --workers 2    # two processes, one port

Exit status: 0 after SIGTERM or SIGINT, 1 if the model cannot be served or the inference worker died (a
supervisor should restart the service), 2 for a usage error. With --workers N, 1 also when any worker ended
on its own (the others are then stopped gracefully): see serving/supervisor.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

from image_classifier import __version__
from image_classifier.cli import (
    add_verbose_option,
    checked,
    configure_logging,
    exit_code_of,
    positive_float,
    positive_int,
)
from image_classifier.cli_parser import ArgumentParser
from image_classifier.secret import Secret
from image_classifier.serving.options import add_image_options, add_model_options, model_request_from
from image_classifier.serving.registry_client import is_alias_uri
from image_classifier.serving.settings import DEFAULT_MAX_REQUEST_PIXELS, ServeSettings
from image_classifier.serving.supervisor import supervise, worker_backlog

logger = logging.getLogger(__name__)

TOKEN_ENV = "SERVE_TOKEN"
port_int = checked(int, lambda v: 0 <= v <= 65535, "a port from 0 to 65535 (0: any free port)")
non_negative_float = checked(float, lambda v: 0 <= v < float("inf"), "a finite number of 0 or more")
# Each worker imports torch and loads its own model (a few hundred MB): a mistyped count (40000 for 4) would
# fork until the machine ran out of memory or processes, deaf to SIGTERM while forking (supervisor.py).
MAX_WORKERS = 128
workers_int = checked(int, lambda v: 1 <= v <= MAX_WORKERS, f"a number of processes from 1 to {MAX_WORKERS}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="image_classifier_serve",
        description="Serve predictions over HTTP: POST /predict, POST /predict/batch, GET /health, /ready, "
        f"/metadata, /metrics, /docs. Set {TOKEN_ENV} to require 'Authorization: Bearer <token>' on every "
        "route but /health.",
    )
    add_model_options(parser)
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    http.add_argument("--port", type=port_int, default=8000, help="port to listen on")
    http.add_argument("--top_k", type=positive_int, default=3, help="classes per image unless ?top_k= says otherwise")
    http.add_argument(
        "--max_upload_bytes",
        type=positive_int,
        default=4 * 1024 * 1024,
        help="largest request body (one image or a batch)",
    )
    http.add_argument(
        "--max_batch_images", type=positive_int, default=64, help="most images in one /predict/batch request"
    )
    add_image_options(http, positive_int)
    http.add_argument(
        "--max_request_pixels",
        type=positive_int,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help="most declared pixels (width x height) of all the images of one request together",
    )
    http.add_argument(
        "--decode_workers",
        type=positive_int,
        default=2,
        help="threads parsing and decoding uploads: at most this many images are decoded at once",
    )
    http.add_argument(
        "--max_queue",
        type=positive_int,
        default=64,
        help="most prediction requests in progress at once (receiving, decoding, waiting for the model); "
        "more are answered 503 with Retry-After",
    )
    http.add_argument(
        "--request_timeout",
        type=positive_float,
        default=30.0,
        help="seconds a prediction request may take, from its headers to its answer; then 503 with Retry-After",
    )
    http.add_argument(
        "--graceful_timeout",
        type=positive_float,
        default=30.0,
        help="seconds that requests in flight get to finish after SIGTERM; those still unanswered a second "
        "before (a quarter of it, if shorter) are answered 503",
    )
    http.add_argument("--access_log", action="store_true", help="log every request (uvicorn's access log)")
    http.add_argument(
        "--workers",
        type=workers_int,
        default=1,
        help="processes serving the port, each with its own model, batcher, --decode_workers and --max_queue; "
        "SIGHUP and SIGTERM reach them all, and if one ends on its own the service stops with status 1",
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--max_batch_size", type=positive_int, default=32, help="most images per forward pass (1: no batching)"
    )
    batching.add_argument(
        "--max_wait_ms",
        type=non_negative_float,
        default=2.0,
        help="how long a batch waits for requests already arriving; a lone request never waits",
    )
    batching.add_argument("--torch_threads", type=positive_int, default=1, help="CPU threads of the forward pass")
    reload = parser.add_argument_group("reload (models:/NAME@ALIAS only; SIGHUP also reloads)")
    reload.add_argument(
        "--reload_every",
        type=positive_float,
        default=None,
        help="re-resolve the alias every this many seconds, and swap in the version it points to",
    )
    reload.add_argument(
        "--allow_class_change",
        action="store_true",
        help="swap in a new version even if its classes differ from the served ones (in order or number); "
        "without it such a version is refused and the old one keeps serving",
    )
    add_verbose_option(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServeSettings:
    if args.reload_every is not None and not is_alias_uri(args.model):
        parser.error("--reload_every needs a model given as models:/NAME@ALIAS")
    return ServeSettings(
        model=model_request_from(parser, args),
        host=args.host,
        port=args.port,
        top_k=args.top_k,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_upload_bytes=args.max_upload_bytes,
        max_batch_images=args.max_batch_images,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        decode_workers=args.decode_workers,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        reload_every=args.reload_every,
        allow_class_change=args.allow_class_change,
        graceful_timeout=args.graceful_timeout,
        torch_threads=args.torch_threads,
        access_log=args.access_log,
        workers=args.workers,
        token=token_from_environment(parser),
    )


def token_from_environment(parser: argparse.ArgumentParser) -> Secret | None:
    """$SERVE_TOKEN without its surrounding whitespace (a secret file's trailing newline): clients strip theirs
    too. Only visible ASCII can be sent as 'Authorization: Bearer <token>': anything else is refused here,
    rather than every request being 401 later. No message shows any part of the token."""
    token = os.environ.get(TOKEN_ENV)
    if token is None:
        return None
    token = token.strip()
    if not token:
        parser.error(f"{TOKEN_ENV} is set but empty: unset it to serve without a token, or give it a value")
    if not all(" " < character <= "~" for character in token):
        parser.error(
            f"{TOKEN_ENV} holds a character that an HTTP header cannot carry as a bearer token: use visible "
            "ASCII only (letters, digits, punctuation; no spaces or other characters inside)"
        )
    return Secret(token)


class HangupsDuringStartup:
    """SIGHUP's default action kills the process: from the command's first line until the app's own handler
    takes over, a SIGHUP is only remembered (the alias is re-resolved once the service runs)."""

    def __init__(self) -> None:
        self.count = 0
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            signal.signal(signal.SIGHUP, self._record)

    def _record(self, number, frame) -> None:
        self.count += 1

    def __call__(self) -> bool:
        return self.count > 0


def _stoppable_server(config, on_stop: Callable[[], None]):
    """uvicorn's Server, which also tells the app when a stop begins: requests still in progress are then
    answered (503 if need be) before --graceful_timeout ends, and new ones are refused."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            on_stop()
            super().handle_exit(sig, frame)

    return Server(config)


def serve(
    settings: ServeSettings,
    hangups: HangupsDuringStartup | None = None,
    listener: socket.socket | None = None,
    worker: int | None = None,
) -> int:
    """One service process: on its own port, or as worker number `worker` on the supervisor's `listener`."""
    # Imported here so that --help and usage errors answer at once, without loading torch.
    import torch
    import uvicorn

    from image_classifier.serving.app import create_app
    from image_classifier.serving.metrics import WorkerInfo
    from image_classifier.serving.model_source import load_model

    torch.set_num_threads(settings.torch_threads)
    model = load_model(settings.model)  # before binding the port: a bad model is one error line, not a stack
    app = create_app(settings, model, hangup_before_start=hangups)
    state = app.state.service
    if worker is not None:
        state.metrics.registry.register(WorkerInfo(worker))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our handlers, set up once in main()
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.graceful_timeout,
        server_header=False,
        **({} if listener is None else {"backlog": worker_backlog()}),  # the supervisor's socket keeps its own
    )
    server = _stoppable_server(config, on_stop=state.begin_stop)
    state.request_exit = lambda: setattr(server, "should_exit", True)
    stopped_by: list[int] = []

    def stopped(number, frame) -> None:
        stopped_by.append(number)
        # A stop that comes before uvicorn has put its own handlers in place (while it makes its event loop)
        # must still stop it: uvicorn then starts up and shuts down at once, instead of serving on.
        server.should_exit = True

    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the previous handler:
    # this one, so that a requested stop ends with exit status 0 instead of death by signal.
    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=None if listener is None else [listener])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        logger.error("the server did not start (see the messages above)")
        return 1
    if state.batcher is not None and state.batcher.failure is not None:
        logger.error("exiting with status 1: the inference worker died (%s)", state.batcher.failure)
        return 1
    if stopped_by:
        logger.info("stopped by %s", signal.Signals(stopped_by[0]).name)
    return 0


def main(argv: list[str] | None = None) -> int:
    hangups = HangupsDuringStartup()  # first: a SIGHUP during start-up must never kill the service
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args)
    configure_logging(args.verbose)
    if settings.workers == 1:
        return exit_code_of(lambda: serve(settings, hangups))

    def worker(settings: ServeSettings, listener: socket.socket, number: int) -> int:
        return exit_code_of(lambda: serve(settings, hangups, listener, number))

    return exit_code_of(lambda: supervise(settings, worker))


if __name__ == "__main__":
    sys.exit(main())
