"""The image-folder benchmarks run end to end on tiny sizes and report every figure the README quotes.

This checks the scripts, not the speed: no timing is asserted.
"""

import json
import sys

import pytest

from tests.conftest import REPO_ROOT, run_command

pytestmark = pytest.mark.slow


def test_the_folder_benchmark_reports_preparing_and_both_jobs(tmp_path):
    output = tmp_path / "bench.json"
    args = ["--images", "300", "--epochs", "1", "--no-resnet", "--work", str(tmp_path / "work"), "--json", str(output)]
    result = run_command([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_folders.py"), *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    assert results["prepare"]["package"]["images"] == 300 and results["prepare"]["torchvision"]["images"] == 300
    job = results["net_job"]
    assert job["torchvision_seconds"] > 0 and job["first_run_seconds"] > 0 and job["cache_reused_seconds"] > 0
    assert "first run" in result.stdout and "cache reused" in result.stdout


def test_the_memory_benchmark_reports_each_step(tmp_path):
    args = ["--images", "300", "--image_sizes", "16,48", "--work", str(tmp_path / "work")]
    script = str(REPO_ROOT / "benchmarks" / "bench_prepared_memory.py")
    result = run_command([sys.executable, script, *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["sizes"]["48"]["array_MB"] == 300 * 3 * 48 * 48 // 2**20
    for size in ("16", "48"):
        assert {"VmHWM", "RssAnon", "RssFile"} <= figures["sizes"][size]["train"]["after_one_epoch"].keys()
        assert figures["sizes"][size]["prepare"]["workers"]["RssAnon"] > 0  # the workers were seen
    assert figures["in_memory"]["array_MB"] == figures["sizes"]["48"]["array_MB"]
