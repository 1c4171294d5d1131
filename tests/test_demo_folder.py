"""`make demo-folder`'s script, end to end on a tiny generated image folder: train, register, predict, serve."""

import json

import pytest

from image_classifier.data.synthetic import generate_image_folder
from tests.conftest import BIN_DIR, REPO_ROOT, run_command

pytestmark = pytest.mark.slow


def test_the_demo_trains_registers_predicts_and_serves(tmp_path):
    images = generate_image_folder(tmp_path / "images", 60, 20, seed=1, min_side=16, max_side=40)
    experiments = tmp_path / "experiments"
    result = run_command(
        ["bash", str(REPO_ROOT / "scripts" / "demo_folder.sh"), str(BIN_DIR), str(images), str(experiments), "r1"],
        cwd=tmp_path,
        env={"IMAGE_CLASSIFIER_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((experiments / "demo-folder" / "r1" / "run.json").read_text())
    assert run["status"] == "completed" and run["dataset"]["format"] == "image folder"
    registry = json.loads((experiments / "registry.json").read_text())
    assert "demo-folder" in json.dumps(registry) and "production" in json.dumps(registry)
    assert result.stdout.count("test/") >= 3  # the predictions table names the three images
    answer = json.loads([line for line in result.stdout.splitlines() if line.startswith('{"predictions"')][0])
    assert answer["model"]["name"] == "demo-folder" and len(answer["predictions"]) == 2
    assert answer["predictions"][0]["class"] in run["classes"]
    assert "stopped by SIGTERM" in result.stderr
