"""What the trainer records for tracking: the richer metrics, the figures, and `models:/` pretrained models."""

import json
import shutil
import struct
import sys

import pytest

from image_classifier.run_dir import sha256_of
from image_classifier.tracking.file_registry import REGISTRY_FILE
from image_classifier.tracking.registries import open_registry
from tests.conftest import REPO_ROOT, RUN_FILES, TEST_SIZE, command, run_command, run_trainer, trainer_args

pytestmark = pytest.mark.slow

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_metrics_hold_per_epoch_losses_class_accuracy_throughput_and_the_confusion_matrix(trained_experiments):
    for run in ("seed0", "seed1"):
        run_dir = trained_experiments / "e" / run
        assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
        metrics = json.loads((run_dir / "metrics.json").read_text())
        last = metrics["history"][-1]
        assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
        assert last["test_accuracy"] == metrics["test_accuracy"] and last["test_loss"] == metrics["test_loss"]
        assert last["class_accuracy"] == metrics["class_accuracy"]
        for entry in metrics["history"]:
            assert entry["test_loss"] > 0 and entry["train_loss"] > 0
            assert entry["images_per_second"] > 0 and entry["seconds"] > 0
            assert list(entry["class_accuracy"]) == list(metrics["class_accuracy"])
        matrix = metrics["confusion_matrix"]
        assert len(matrix) == len(matrix[0]) == 10 and sum(map(sum, matrix)) == TEST_SIZE
        assert 100 * sum(matrix[i][i] for i in range(10)) / TEST_SIZE == pytest.approx(metrics["test_accuracy"])
        for index, name in enumerate(metrics["class_accuracy"]):
            if sum(matrix[index]):
                assert 100 * matrix[index][index] / sum(matrix[index]) == pytest.approx(metrics["class_accuracy"][name])


def test_the_figures_exist_are_readable_sizes_and_differ_when_results_differ(trained_experiments):
    for name in ("curves.png", "confusion_matrix.png", "metrics.png"):
        first, second = (trained_experiments / "e" / run / name for run in ("seed0", "seed1"))
        width, height = _png_size(first)
        assert width >= 800 and height >= 450, (name, width, height)
        assert first.stat().st_size > 20_000
        assert first.read_bytes() != second.read_bytes(), name


def test_older_runs_read_everywhere(trained_experiments, capsys, tmp_path):
    """The example run as version 1.0.0 made it, before test_loss, confusion matrices and curves existed."""
    from image_classifier.tracking.runs import main

    example = REPO_ROOT / "tests" / "fixtures" / "older_experiments"
    assert main(["list", "--experiments_folder", str(example), "--format", "json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["run"] == "run_1"]
    assert (row["status"], row["test_accuracy"], row["epochs"]) == ("completed", 94.0, 2)
    assert (row["architecture"], row["image_size"]) == ("net", 32)  # no spec recorded: the notebook's Net
    assert main(["show", "local_exp_test/run_1", "--experiments_folder", str(example)]) == 0
    shown = capsys.readouterr().out
    assert "metrics per epoch" in shown and "without a spec: the notebook's Net at 32 x 32" in shown
    assert "architecture  net" in shown and "image_size    32 x 32" in shown and "mean          0.5, 0.5, 0.5" in shown

    # Compared with a run of this version, on the same classes: the same model, only the arguments differ.
    both = tmp_path / "with_older"
    shutil.copytree(example / "local_exp_test", both / "local_exp_test")
    shutil.copytree(trained_experiments / "e" / "seed0", both / "local_exp_test" / "seed0")
    assert main(["compare", "local_exp_test/run_1", "local_exp_test/seed0", "--experiments_folder", str(both)]) == 0
    compared = capsys.readouterr().out
    assert "model that differs\n  (none)" in compared and "arguments that differ" in compared


def test_training_from_a_registered_version_records_the_uri_and_the_version(dataset, experiments):
    registry = open_registry(experiments)
    registry.register(experiments / "e" / "seed0", "cifar-net")
    registry.register(experiments / "e" / "seed1", "cifar-net", aliases=["production"])
    result = run_trainer(
        *trainer_args(dataset, experiments, "tuned", "--pretrained_model", "models:/cifar-net@production")
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((experiments / "e" / "tuned" / "run.json").read_text())
    assert manifest["pretrained_model"] == {
        "path": str(experiments / "e" / "seed1" / "model.pth"),
        "sha256": sha256_of(experiments / "e" / "seed1" / "model.pth"),
        "uri": "models:/cifar-net@production",
        "version": 2,
    }
    assert manifest["arguments"]["pretrained_model_uri"] == "models:/cifar-net@production"
    assert "cifar-net version 2" in result.stderr

    # Stopped and resumed, a run from a registered version ends with the bytes of the uninterrupted one.
    args = trainer_args(dataset, experiments, "resumed", "--pretrained_model", "models:/cifar-net@production")
    stopped = run_command([sys.executable, FAULT_INJECTION, "TERM", "evaluate:1", *args])
    assert stopped.returncode == 143, stopped.stderr
    resumed = run_trainer(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    resumed_manifest = json.loads((experiments / "e" / "resumed" / "run.json").read_text())
    assert resumed_manifest["model_sha256"] == manifest["model_sha256"]
    assert resumed_manifest["pretrained_model"]["version"] == 2

    # A registered file whose bytes changed is refused before any work, with one error line.
    with (experiments / "e" / "seed1" / "model.pth").open("ab") as stream:
        stream.write(b"\0")
    refused = run_trainer(*trainer_args(dataset, experiments, "refused", "--pretrained_model", "models:/cifar-net/2"))
    assert refused.returncode == 1
    assert "changed since it was registered" in refused.stderr and "Traceback" not in refused.stderr
    assert not (experiments / "e" / "refused").exists() and not (experiments / "e" / "refused.incomplete").exists()
    assert json.loads((experiments / REGISTRY_FILE).read_text())["models"]["cifar-net"]["aliases"] == {"production": 2}


def test_the_runs_command_refuses_an_unknown_alias_for_the_trainer_too(dataset, experiments):
    result = run_command(
        [
            command("image_classifier_trainer"),
            *trainer_args(dataset, experiments, "x", "--pretrained_model", "models:/nobody@production"),
        ]
    )
    assert result.returncode == 1 and "no model named 'nobody'" in result.stderr


def test_a_run_from_an_alias_resumes_with_its_version_after_the_alias_moved_and_the_source_run_went(
    dataset, experiments
):
    registry = open_registry(experiments)
    registry.register(experiments / "e" / "seed0", "cifar-net", aliases=["production"])
    registry.register(experiments / "e" / "seed1", "cifar-net")
    uri = ("--pretrained_model", "models:/cifar-net@production")
    reference = run_trainer(*trainer_args(dataset, experiments, "reference", *uri))
    assert reference.returncode == 0, reference.stderr

    args = trainer_args(dataset, experiments, "resumed", *uri)
    killed = run_command([sys.executable, FAULT_INJECTION, "KILL", "train:2:5", *args])
    assert killed.returncode == -9, killed.stderr
    # Meanwhile the alias moves on to version 2 and version 1's source run is deleted.
    registry.set_alias("cifar-net", "production", 2)
    shutil.rmtree(experiments / "e" / "seed0")

    resumed = run_trainer(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "cifar-net version" not in resumed.stderr  # the registry was not asked
    run_dir = experiments / "e" / "resumed"
    assert (run_dir / "model.pth").read_bytes() == (experiments / "e" / "reference" / "model.pth").read_bytes()
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["pretrained_model"]["version"] == manifest["arguments"]["pretrained_model_version"] == 1
    assert manifest["pretrained_model"]["uri"] == "models:/cifar-net@production"
