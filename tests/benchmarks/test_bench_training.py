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
    args = ["--train-size", "200", "--test-size", "50", "--repeats", "1", "--epochs", "1", "--batch-sizes", "4,32"]
    result = run_command([sys.executable, str(BENCHMARK), *args, "--json", str(output)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    results = json.loads(output.read_text())
    assert set(results) == {"machine", "settings", "train", "eval", "end_to_end", "matmul_peak_gflops"}
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
    assert results["end_to_end"]["notebook_seconds"] > 0 and results["end_to_end"]["package_seconds"] > 0
    assert results["matmul_peak_gflops"] > 0
    assert "| default job, 1 epochs at batch 4, wall s |" in result.stdout  # the table is printed
