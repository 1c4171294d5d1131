"""The trainer imports nothing its first training step does not need before that step.

torchvision (its models pull in torch._dynamo), torch._dynamo and torch._inductor (seconds of imports)
and matplotlib (the figures, drawn after training) all wait until they are used.
"""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT, run_command, trainer_args

PROBE = REPO_ROOT / "benchmarks" / "first_step.py"
NOT_BEFORE_THE_FIRST_STEP = ("torchvision", "torch._dynamo", "torch._inductor", "matplotlib")


def test_nothing_heavy_is_imported_before_the_first_training_step(dataset, tmp_path):
    output = tmp_path / "first_step.json"
    result = run_command([sys.executable, str(PROBE), str(output), *trainer_args(dataset, tmp_path / "experiments")])
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert record["first_step_done"] >= record["first_step_started"]
    assert "torch" in record["modules"] and "image_classifier.trainer" in record["modules"]  # the probe saw the run
    loaded = [
        name
        for name in record["modules"]
        if any(name == heavy or name.startswith(heavy + ".") for heavy in NOT_BEFORE_THE_FIRST_STEP)
    ]
    assert loaded == []


# Modules that read, write or compare a run's plain records: `image_classifier_runs`, the resume checks and
# `image_classifier_reproduce`'s report use them without a model, so they must not cost torch's import.
RECORD_MODULES = (
    "image_classifier.checkpoint",
    "image_classifier.run_record",
    "image_classifier.run_comparison",
    "image_classifier.run_dir",
    "image_classifier.durable_files",
    "image_classifier.locking",
    "image_classifier.flatten",
    "image_classifier.clock",
    "image_classifier.secret",
    "image_classifier.manifest",
    "image_classifier.tracking.runs",
    "image_classifier.tracking.registries",
)


def test_the_record_modules_import_no_torch_and_compare_runs_without_it():
    code = (
        "import importlib, sys\n"
        f"for name in {RECORD_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, name\n"
        "from image_classifier.run_comparison import environment_differences, metric_differences\n"
        "run = {'classes': ['a', 'b'], 'device': 'cpu'}\n"
        "metrics = {'test_accuracy': 50.0}\n"
        "print(metric_differences(metrics, metrics), environment_differences(run, run))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[] []", "False"]
