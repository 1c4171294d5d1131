"""The serving benchmark runs end to end on short settings, beside its peer (LitServe), and writes every figure
the README's serving table quotes, for both servers, both uploads and every client count.

This checks the script, not the speed: no timing is asserted. LitServe runs from its own venv
(`make litserve-venv`, which `make test` builds first).
"""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_command

pytestmark = pytest.mark.slow

BENCHMARK = REPO_ROOT / "benchmarks" / "serve_load.py"
LITSERVE_PYTHON = REPO_ROOT / ".venv-litserve" / "bin" / "python"
FIGURES = ("requests_per_second", "p50_ms", "p95_ms", "p99_ms", "server_cpu_us_per_request")


def test_the_serving_benchmark_writes_every_figure_for_both_servers(tmp_path):
    assert LITSERVE_PYTHON.exists(), "LitServe's venv is missing: run `make litserve-venv`"
    output = tmp_path / "serve.json"
    model = str(REPO_ROOT / "experiments" / "local_exp_test" / "run_1")
    args = ["--model", model, "--clients", "1,3", "--requests", "4", "--warmup", "1", "--repeats", "1"]
    args += ["--litserve_python", str(LITSERVE_PYTHON), "--json", str(output)]
    result = run_command([sys.executable, str(BENCHMARK), *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    rows = {(r["server"], r["upload"], r["clients"]): r for r in results["results"]}
    expected = {
        (server, upload, clients)
        for server in ("image_classifier_serve", "LitServe")
        for upload in ("raw", "multipart")
        for clients in (1, 3)
    }
    expected |= {("image_classifier_serve --max_batch_size 1", "raw", clients) for clients in (1, 3)}
    expected |= {("image_classifier_serve", "GET /health", clients) for clients in (1, 3)}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["requests"] == 4 * key[2], key
        for figure in FIGURES:
            assert math.isfinite(row[figure]) and row[figure] > 0, (key, figure, row)
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"], (key, row)
        if key[0].startswith("image_classifier_serve") and key[1] != "GET /health":
            assert row["images_per_pass"] >= 1 and row["gc_pause_ms"] >= 0, (key, row)
    for upload in ("raw", "multipart"):
        assert set(results["ratios"][upload]) >= {"our_p99_over_p50", "throughput_over_peer", "p99_over_peer_p99"}
    # The Markdown table is printed, with a row per server.
    assert "| upload | server | clients | requests/s | p50 ms | p95 ms | p99 ms |" in result.stdout
    assert "| multipart | LitServe | 3 |" in result.stdout
    assert "| raw | image_classifier_serve | 3 |" in result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_benchmark_stops_the_server_it_was_starting(sig, tmp_path):
    """Ctrl-C (or a SIGTERM, from `timeout` or a CI runner) while a server imports torch and loads its model,
    the longest wait of a run: the server, in a session of its own that no terminal signal reaches, was left
    running (serving on its port once ready, for ever)."""
    benchmark = subprocess.Popen(
        [sys.executable, str(BENCHMARK), "--model", str(tmp_path / "model"), "--litserve_python", "none"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not _children(benchmark.pid):
            assert benchmark.poll() is None and time.monotonic() < deadline, benchmark.communicate()
            time.sleep(0.05)
        (server,) = _children(benchmark.pid)
        benchmark.send_signal(sig)
        benchmark.wait(timeout=120)
        assert benchmark.returncode != 0
        assert not _alive(server), "the server outlived the benchmark"
    finally:
        for pid in _children(benchmark.pid) + ([server] if "server" in locals() else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if benchmark.poll() is None:
            benchmark.kill()
        benchmark.wait()
