"""Load on image_classifier_serve beside a peer server (LitServe): requests/s, latency, server CPU.

    python benchmarks/serve_load.py [--model experiments/local_exp_test/run_1] [--clients 1,8,32] [--requests 100]
        [--litserve_python .venv-litserve/bin/python] [--json results.json]
    python benchmarks/serve_load.py --workers 2    # our services with --workers 2: compare with --workers 1

Starts, on 127.0.0.1 (free ports) and from the same model: image_classifier_serve with its default settings;
LitServe (benchmarks/litserve_peer.py, run by the interpreter of its own venv, `make litserve-venv`) serving
the same weights with the same decoding, normalisation and top-k answer, batching up to 32 images waiting at
most 2 ms, as ours does; with --compiled_stack, our service run by LitServe's interpreter, where uvicorn
picks the uvloop event loop and the httptools parser that LitServe's dependencies bring (ours are asyncio's
loop and h11, as in the prod image); and, as references for our own service, image_classifier_serve with
`--max_batch_size 1` (one image a forward pass) and GET /health (the ceiling of what our server and this
client can do at all). For 1, 8 and 32 concurrent clients that each send a fixed number of requests back to
back on one keep-alive connection, it measures POST /predict with a 32 x 32 PNG, sent as the raw body and as
a multipart upload. Besides rates and latencies it reports the CPU time the server used per request (every
thread of every process of the server: LitServe runs its model in a process of its own; from /proc, Linux
only) and, for ours, the mean images per forward pass and the time spent in garbage collections (from
/metrics: every thread waits while one runs). Every measurement is repeated, the servers interleaved, and
the run with the most requests/s is kept. Prints a Markdown table and the ratios
docs/performance.md quotes; stops the servers. Only loopback is used, and the load is bounded by --requests.

The clients are a minimal HTTP/1.1 client on asyncio streams in this one process, so that the client's own
overhead is small and the same for every server and route.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve().parent / "litserve_peer.py"
OURS, PEER_NAME, UNBATCHED = "image_classifier_serve", "LitServe", "image_classifier_serve --max_batch_size 1"
COMPILED = "image_classifier_serve on uvloop + httptools"
RAW, MULTIPART, HEALTH = "raw", "multipart", "GET /health"
BOUNDARY = "----serve-load-boundary"


@dataclass(frozen=True)
class Result:
    server: str
    upload: str  # raw, multipart, or GET /health
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    server_cpu_s: float  # CPU time the server's processes used during the measurement (user + system)
    images_per_batch: float | None  # mean images per forward pass, for our /predict
    gc_pause_ms: float | None  # our service's time in garbage collections during the measurement

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000

    def figures(self) -> dict:
        return {
            "requests_per_second": self.per_second,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "max_ms": max(self.latencies) * 1000,
            "server_cpu_us_per_request": self.cpu_us_per_request,
            "images_per_pass": self.images_per_batch,
            "gc_pause_ms": self.gc_pause_ms,
            "requests": self.requests,
        }


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    metrics: bool  # has our /metrics (images per forward pass)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(name: str, command: list[str], log_path: Path, metrics: bool) -> Server:
    port = free_port()
    with open(log_path, "wb") as log:
        # A session of its own: LitServe starts processes of its own, stopped with it as a group.
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=log, stderr=log, cwd=REPO, start_new_session=True
        )
    server = Server(name, process, port, metrics)
    try:
        deadline = time.monotonic() + 300  # importing torch takes 10-40 s on a busy machine
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}; its log:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return server
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"{name} did not become ready; its log:\n{log_path.read_text()[-3000:]}")
    except BaseException:  # Ctrl-C while it starts, the longest wait: no terminal signal reaches its session
        stop_servers([server])
        raise


def stop_servers(servers: list[Server]) -> None:
    """Every one, even if Ctrl-C or SIGTERM comes again meanwhile (then raised once they are stopped)."""
    stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        for server in servers:
            stop_server(server)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stopped(number, frame) -> None:
    """SIGTERM or SIGHUP (`timeout`, a CI runner, a closed terminal) unwinds as Ctrl-C does: servers stopped."""
    raise SystemExit(128 + number)


def stop_server(server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)  # what is left of the group (LitServe's workers)
    server.process.wait()


def request_bytes(upload: str, png: bytes) -> bytes:
    if upload == HEALTH:
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    if upload == RAW:
        content_type, body = "image/png", png
    else:
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        body = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="image.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
    return (head + "\r\n\r\n").encode() + body


async def one_client(port: int, request: bytes, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {status!r}")
    finally:
        writer.close()


async def load(port: int, request: bytes, clients: int, count: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(one_client(port, request, count, latencies) for _ in range(clients)))
    return time.perf_counter() - started, latencies


def process_tree(pid: int) -> list[int]:
    """The process and its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # The command name (in parentheses) may hold spaces: the fields after its last ")" are fixed.
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def server_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process and its descendants so far, from /proc (Linux): schedstat
    counts nanoseconds, where /proc/PID/stat counts 10 ms ticks."""
    total_ns = 0
    for process in process_tree(pid):
        with contextlib.suppress(FileNotFoundError):  # a process that ended meanwhile
            for task in Path(f"/proc/{process}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                    total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def service_counters(port: int) -> dict[str, float] | None:
    """Forward passes, images and garbage-collection pause seconds so far, from our service's /metrics; None
    with --workers > 1, where a scrape shows the counters of the one worker that answered it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    if "image_classifier_worker_info" in text:
        return None
    counters = {"passes": 0.0, "images": 0.0, "gc_seconds": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "image_classifier_batch_size_count":
            counters["passes"] = float(value)
        elif name == "image_classifier_batch_size_sum":
            counters["images"] = float(value)
        elif name.startswith("image_classifier_gc_pause_seconds_total{"):
            counters["gc_seconds"] += float(value)
    return counters


def measure(server: Server, upload: str, png: bytes, clients: int, count: int, warmup: int) -> Result:
    request = request_bytes(upload, png)
    asyncio.run(load(server.port, request, clients, warmup))
    before = service_counters(server.port) if server.metrics else {}
    cpu_before = server_cpu_seconds(server.process.pid)
    seconds, latencies = asyncio.run(load(server.port, request, clients, count))
    cpu = server_cpu_seconds(server.process.pid) - cpu_before
    per_batch = gc_ms = None
    if before is not None and server.metrics:
        after = service_counters(server.port)
        passes, images = after["passes"] - before["passes"], after["images"] - before["images"]
        per_batch = images / passes if upload != HEALTH and passes else None
        gc_ms = (after["gc_seconds"] - before["gc_seconds"]) * 1000
    return Result(server.name, upload, clients, clients * count, seconds, latencies, cpu, per_batch, gc_ms)


def test_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def print_table(results: list[Result]) -> None:
    print(
        "| upload | server | clients | requests/s | p50 ms | p95 ms | p99 ms | server CPU µs/request | images/pass "
        "| GC pauses ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    order = {RAW: 0, MULTIPART: 1, HEALTH: 2}
    servers = {OURS: 0, PEER_NAME: 1, COMPILED: 2, UNBATCHED: 3}
    for r in sorted(results, key=lambda r: (order[r.upload], r.clients, servers[r.server])):
        row = f"| {r.upload} | {r.server} | {r.clients} | {r.per_second:,.0f} | "
        row += f"{r.percentile(50):.1f} | {r.percentile(95):.1f} | {r.percentile(99):.1f} | "
        row += f"{r.cpu_us_per_request:,.0f} | "
        row += f"{r.images_per_batch:.1f} | " if r.images_per_batch is not None else "| "
        print(row + (f"{r.gc_pause_ms:.0f} |" if r.gc_pause_ms is not None else "|"))


def summary(results: list[Result], most: int) -> dict:
    """The ratios docs/performance.md quotes (issue 16's targets), at the most clients measured."""
    found = {(r.server, r.upload): r for r in results if r.clients == most}
    ratios: dict = {}
    for upload in (RAW, MULTIPART):
        ours, peer = found.get((OURS, upload)), found.get((PEER_NAME, upload))
        if ours is None:
            continue
        ratios[upload] = {"our_p99_over_p50": ours.percentile(99) / ours.percentile(50)}
        if peer is not None:
            ratios[upload]["throughput_over_peer"] = ours.per_second / peer.per_second
            ratios[upload]["p99_over_peer_p99"] = ours.percentile(99) / peer.percentile(99)
        if (UNBATCHED, upload) in found:
            ratios[upload]["batching_over_one_at_a_time"] = ours.per_second / found[(UNBATCHED, upload)].per_second
        if (OURS, HEALTH) in found:
            ratios[upload]["predictions_over_health_ceiling"] = ours.per_second / found[(OURS, HEALTH)].per_second
    return ratios


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="experiments/local_exp_test/run_1", help="run folder to serve")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=100, help="requests per client, after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="requests per client not measured")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every measurement; the best is shown")
    parser.add_argument(
        "--litserve_python",
        default=str(REPO / ".venv-litserve" / "bin" / "python"),
        help="the interpreter of LitServe's venv (make litserve-venv); 'none' leaves the peer out",
    )
    parser.add_argument("--no_references", action="store_true", help="leave out --max_batch_size 1 and /health")
    parser.add_argument(
        "--compiled_stack",
        action="store_true",
        help="also run our service by LitServe's interpreter, where uvicorn picks uvloop and httptools",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes of our services (their --workers)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _stopped)
    clients = [int(c) for c in args.clients.split(",")]
    model = str(Path(args.model).resolve())
    png = test_png()
    workers = ["--workers", str(args.workers)] if args.workers != 1 else []
    ours = [str(BIN / "image_classifier_serve"), "--model", model, "--host", "127.0.0.1", *workers]
    commands = {OURS: (ours, True)}
    if args.litserve_python != "none":
        if not Path(args.litserve_python).exists():
            raise SystemExit(f"no LitServe interpreter at {args.litserve_python}: run `make litserve-venv` first")
        commands[PEER_NAME] = ([args.litserve_python, str(PEER), "--model", model], False)
    if args.compiled_stack:
        if PEER_NAME not in commands:
            raise SystemExit("--compiled_stack needs --litserve_python (its venv holds uvloop and httptools)")
        serve = [args.litserve_python, "-m", "image_classifier.serving.serve", *commands[OURS][0][1:]]
        commands[COMPILED] = (serve, True)
    if not args.no_references:
        commands[UNBATCHED] = ([*commands[OURS][0], "--max_batch_size", "1"], True)
    plan = [(server, upload, count) for count in clients for upload in (RAW, MULTIPART) for server in commands]
    plan = [(server, upload, count) for server, upload, count in plan if not (server == UNBATCHED and upload != RAW)]
    if not args.no_references:
        plan += [(OURS, HEALTH, count) for count in clients]
    best: dict[tuple, Result] = {}
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory() as logs:
        try:
            for index, (name, (command, metrics)) in enumerate(commands.items()):
                servers[name] = start_server(name, command, Path(logs) / f"{index}.log", metrics)
            # Every measurement is repeated, interleaved with the others, and the best kept: the machine's
            # other work makes single runs vary by 20-35 %.
            for _ in range(args.repeats):
                for name, upload, count in plan:
                    result = measure(servers[name], upload, png, count, args.requests, args.warmup)
                    key = (name, upload, count)
                    if key not in best or result.per_second > best[key].per_second:
                        best[key] = result
        finally:
            stop_servers(list(servers.values()))
    results = list(best.values())
    load_average = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python {platform.python_version()}")
    print(f"our services: --workers {args.workers} (server CPU: every process of a server: supervisor and workers)")
    print(
        f"{args.requests} requests per client (after {args.warmup} warm-up), one keep-alive connection each; "
        f"best of {args.repeats} interleaved runs; 1-minute load average at the end {load_average:.1f}\n"
    )
    print_table(results)
    most = max(clients)
    ratios = summary(results, most)
    for upload, figures in ratios.items():
        print(
            f"\nat {most} clients, {upload}: "
            + ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
            + " (targets: our_p99_over_p50 <= 2, throughput_over_peer >= 2, p99_over_peer_p99 <= 1)"
        )
    if args.json is not None:
        table = [{"server": r.server, "upload": r.upload, "clients": r.clients, **r.figures()} for r in results]
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        document = {"settings": settings, "load_average": load_average, "results": table, "ratios": ratios}
        args.json.write_text(json.dumps(document, indent=2, default=str, allow_nan=False))


if __name__ == "__main__":
    main()
