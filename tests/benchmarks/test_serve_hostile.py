"""The hostile requests of issue 14 against a real service process (benchmarks/serve_hostile.py, shortened):
its peak memory stays under the bound the README states, and /health keeps answering meanwhile.

A watchdog in the benchmark kills the service at 8 GB, a third of this machine's memory, should the bound
not hold. /health's latency is the benchmark's figure, not this test's: on a loaded 2-core CI machine its
median was 0.5 s while decoding took both cores (21 ms on a quiet one). What the test holds is liveness, as
a load balancer sees it: every probe answered within the 5 s that health checks commonly allow.
"""

import json
import re
import sys

import pytest

from tests.conftest import REPO_ROOT, run_command
from tests.documentation import section

pytestmark = pytest.mark.slow

BENCHMARK = REPO_ROOT / "benchmarks" / "serve_hostile.py"
HEALTH_CHECK_TIMEOUT_MS = 5000


def stated_bound_mb() -> int:
    """The process's memory bound with the default settings, as docs/serving.md states it."""
    found = re.search(r"at most \*\*([\d,]+) MB\*\* with the defaults", section("serving.md", "Bounds"))
    assert found, "docs/serving.md states no memory bound for the service"
    return int(found.group(1).replace(",", ""))


def test_hostile_requests_stay_within_the_stated_memory_and_health_answers(tmp_path):
    output = tmp_path / "hostile.json"
    model = str(REPO_ROOT / "experiments" / "local_exp_test" / "run_1")
    args = ["--model", model, "--seconds", "8", "--kill_at_gb", "8", "--json", str(output)]
    result = run_command([sys.executable, str(BENCHMARK), *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    assert results["exit"] == "running", results  # neither killed by the watchdog nor dead
    assert results["peak_rss_mb"] < stated_bound_mb(), results
    # The WebP batch declares 64 x 36 MP: refused once its images pass --max_request_pixels (64 MP).
    assert set(results["webp"]["statuses"]) == {"413"}, results["webp"]
    assert set(results["png"]["statuses"]) == {"200"}, results["png"]
    for phase in ("webp", "png"):
        assert results[phase]["health"]["probes"] > 10, results[phase]
        assert results[phase]["health"]["max_ms"] < HEALTH_CHECK_TIMEOUT_MS, results[phase]
