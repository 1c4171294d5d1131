"""The trainer imports nothing its first training step does not need before that step.

torchvision (its models pull in torch._dynamo), torch._dynamo and torch._inductor (seconds of imports)
and matplotlib (the figures, drawn after training) all wait until they are used.
"""

import json
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
