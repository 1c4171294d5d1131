"""The training benchmark runs end to end on tiny sizes and writes every figure the README quotes.

This checks the script, not the speed: no timing is asserted.
"""

import json
import sys

import pytest

from tests.conftest import REPO_ROOT, run_command

pytestmark = pytest.mark.slow

BENCHMARK = REPO_ROOT / "benchmarks" / "bench_training.py"


def test_the_benchmark_writes_every_measurement(tmp_path):
    output = tmp_path / "bench.json"
    args = ["--train-size", "200", "--short-train-size", "100", "--test-size", "50", "--repeats", "1", "--epochs", "1"]
    args += ["--batch-sizes", "4,32"]
    result = run_command([sys.executable, str(BENCHMARK), *args, "--json", str(output)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    results = json.loads(output.read_text())
    assert set(results) == {"machine", "settings", "startup", "jobs", "train", "eval", "matmul_peak_gflops"}
    assert set(results["train"]) == {"4", "32"}
    for row in results["train"].values():
        assert set(row) == {
            "notebook_images_per_second",
            "package_images_per_second",
            "ratio",
            "package_threads",
            "package_gflops",
            "fraction_of_matmul_peak",
        }
        assert row["notebook_images_per_second"] > 0 and row["package_images_per_second"] > 0
    assert results["eval"]["package_eval_batch_size"] == 1000
    assert results["eval"]["same_counts_as_at_training_batch_size"] is True
    assert results["matmul_peak_gflops"] > 0
    _check_jobs(results)
    assert "| default job, 1 epoch(s) of 200 images at batch 4, wall s |" in result.stdout  # the table is printed


def _check_jobs(results):
    startup = results["startup"]
    assert 0 < startup["package_seconds"] and 0 < startup["notebook_seconds"]
    assert set(results["jobs"]) == {"short", "full"}
    for job in results["jobs"].values():
        assert job["notebook_seconds"] > 0 and job["package_seconds"] > 0
        assert job["ratio"] == job["notebook_seconds"] / job["package_seconds"]
        assert 0 < job["package_cpu_seconds"] and 0 < job["notebook_cpu_seconds"]
    # Each whole job takes longer than its start-up alone.
    assert results["jobs"]["short"]["package_seconds"] > startup["package_seconds"]


def test_jobs_only_measures_start_up_and_the_two_jobs(tmp_path):
    output = tmp_path / "bench.json"
    args = ["--train-size", "100", "--short-train-size", "50", "--test-size", "20", "--repeats", "1", "--jobs-only"]
    result = run_command([sys.executable, str(BENCHMARK), *args, "--json", str(output)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(output.read_text())
    assert set(results) == {"machine", "settings", "startup", "jobs"}
    _check_jobs(results)
    assert "| short job, 1 epoch(s) of 50 images at batch 4, wall s |" in result.stdout


def test_the_step_profile_prints_the_time_per_step_and_the_table(tmp_path):
    script = REPO_ROOT / "benchmarks" / "profile_step.py"
    result = run_command([sys.executable, str(script), "--steps", "6", "--repeats", "1", "--rows", "5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "batch 4, 1 thread(s), channels-last True:" in result.stdout
    assert "aten::convolution_backward" in result.stdout  # the profiler's table, with the step's operators
