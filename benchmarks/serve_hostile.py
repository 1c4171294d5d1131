"""Hostile requests against image_classifier_serve: its peak memory and /health's latency meanwhile.

    python benchmarks/serve_hostile.py [--model experiments/local_exp_test/run_1] [--seconds 20] [--json FILE]

Starts the service on 127.0.0.1 (a free port, the default settings unless --serve_args says otherwise) and,
while one client measures GET /health every 50 ms, sends the requests of issue 14's "Why":

1. `webp`: 4 clients at once, each POSTing /predict/batch with 64 lossless WebP files of about 1.4 KB that
   each declare 6000 x 6000 pixels (92 KB a request), again and again for --seconds;
2. `png`: 4 clients at once, each POSTing /predict with a valid 32 x 32 PNG padded with 300,000 empty
   chunks before its pixels (3.6 MB, under the upload limit), again and again for --seconds.

It reports the service's peak resident memory (VmHWM, from /proc: Linux only) after each phase, the answers'
statuses, and /health's median and worst latency before and during each phase. A watchdog reads the
service's resident memory every 20 ms and kills it past --kill_at_gb (default 8, a third of this machine's
24 GB), so that a service without bounds cannot take the machine down. Only loopback is used, every loop is
bounded by --seconds, and the service is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

SERVE = str(Path(sys.executable).parent / "image_classifier_serve")
GB = 1024**3


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def webp_declaring(side: int = 6000) -> bytes:
    """A lossless WebP of one colour: about 1.4 KB for 6000 x 6000 pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def padded_png(chunks: int = 300_000) -> bytes:
    """A valid 32 x 32 PNG with `chunks` empty private chunks between its header and its pixels."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    png = buffer.getvalue()
    after_header = 8 + 25  # signature, IHDR
    return png[:after_header] + chunk(b"zzZz", b"") * chunks + png[after_header:]


def memory_kb(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field_name + ":"))


@dataclass
class Watchdog:
    """Kills the service once its resident memory passes `limit_bytes`; remembers the most it saw."""

    pid: int
    limit_bytes: int
    killed_at: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                resident = memory_kb(self.pid, "VmRSS") * 1024
            except (OSError, StopIteration):
                return  # the process is gone
            if resident > self.limit_bytes:
                self.killed_at = resident
                os.kill(self.pid, signal.SIGKILL)
                return
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [SERVE, "--model", model, "--host", "127.0.0.1", "--port", str(port), *extra], stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # importing torch takes 10-40 s on a busy machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return process, url
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the service did not become ready; see {log_path}")


def health_latencies(url: str, seconds: float, stop: threading.Event) -> list[float]:
    """GET /health on a fixed schedule, every 50 ms for `seconds` (or until `stop`), each on a connection of its
    own and timed from when it was due: a stalled server delays every probe due meanwhile, as it would delay
    a load balancer's checks (a probe loop that waited for each answer would take fewer samples exactly when
    the server stalls). A probe that fails counts its time to fail."""
    latencies: list[float] = []

    host, port = url.rsplit("/", 1)[1].split(":")

    def probe(due: float) -> None:
        # A raw socket: an HTTP client library would spend more of this machine's CPU than the server does.
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while sock.recv(4096):
                pass
        latencies.append(time.perf_counter() - due)

    start = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        for index in range(int(seconds / 0.05)):
            if stop.is_set():
                break
            due = start + index * 0.05
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(probe, due)
    return latencies


def attack(url: str, send, clients: int, seconds: float, stop: threading.Event) -> dict[str, int]:
    """`clients` threads calling `send(client)` back to back for `seconds`; the answers' statuses counted."""
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def client_loop(_: int) -> None:
        ends = time.monotonic() + seconds
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < ends and not stop.is_set():
                try:
                    status = str(send(client).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    return statuses


def summary(latencies: list[float]) -> dict[str, float]:
    ms = sorted(latency * 1000 for latency in latencies)
    return {
        "probes": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else float("nan"),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2) if ms else float("nan"),
        "max_ms": round(ms[-1], 2) if ms else float("nan"),
    }


def run(
    model: str, seconds: float, clients: int, kill_at_gb: float, serve_args: list[str], logs: Path, only: list[str]
) -> dict:
    webp, png = webp_declaring(), padded_png()
    batch = [("files", (f"{i}.webp", webp, "image/webp")) for i in range(64)]
    phases = {
        "webp": lambda client: client.post(url + "/predict/batch", files=batch),
        "png": lambda client: client.post(url + "/predict", content=png, headers={"Content-Type": "image/png"}),
    }
    process, url = start_server(model, serve_args, logs / "serve.log")
    watchdog = Watchdog(process.pid, int(kill_at_gb * GB))
    results: dict = {
        "settings": {
            "serve_args": serve_args,
            "clients": clients,
            "seconds": seconds,
            "kill_at_gb": kill_at_gb,
            "phases": only,
        },
        "payloads": {"webp_bytes": len(webp), "webp_request_files": len(batch), "png_bytes": len(png)},
    }
    try:
        results["baseline"] = {
            "rss_mb": memory_kb(process.pid, "VmRSS") // 1024,
            "health": summary(health_latencies(url, 3, threading.Event())),
        }
        for name, send in phases.items():
            if name not in only:
                continue
            stop = threading.Event()
            with ThreadPoolExecutor(1) as prober:
                probes = prober.submit(health_latencies, url, seconds + 60, stop)
                statuses = attack(url, send, clients, seconds, threading.Event())
                stop.set()
                latencies = probes.result()
            results[name] = {
                "statuses": statuses,
                "health": summary(latencies),
                "peak_rss_mb": memory_kb(process.pid, "VmHWM") // 1024 if process.poll() is None else None,
                "killed_at_mb": watchdog.killed_at // 2**20 if watchdog.killed_at else None,
            }
            if process.poll() is not None:
                break
    finally:
        watchdog.stop.set()
        alive = process.poll() is None
        results["peak_rss_mb"] = memory_kb(process.pid, "VmHWM") // 1024 if alive else None
        results["killed_at_mb"] = watchdog.killed_at // 2**20 if watchdog.killed_at else None
        results["exit"] = "killed by the watchdog" if watchdog.killed_at else ("running" if alive else "died")
        if alive:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="experiments/local_exp_test/run_1", help="run folder to serve")
    parser.add_argument("--seconds", type=float, default=20, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="attacking clients in each phase")
    parser.add_argument("--kill_at_gb", type=float, default=8, help="the watchdog's limit on resident memory")
    parser.add_argument("--serve_args", default="", help="more options for the service, e.g. '--decode_workers 1'")
    parser.add_argument("--phases", default="webp,png", help="which attacks to send, in order: webp, png")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as logs:
        only = args.phases.split(",")
        results = run(
            args.model, args.seconds, args.clients, args.kill_at_gb, args.serve_args.split(), Path(logs), only
        )
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
