"""torchvision architectures through the installed trainer: byte-identical repeats and exact resume with batch
norm and dropout, the spec in run.json, pretrained weights of another class count, clear refusals."""

import json
import sys
from pathlib import Path

import pytest
import torch

from image_classifier.normalization import IMAGENET_MEAN, IMAGENET_STD
from image_classifier.run_comparison import environment_differences
from tests.conftest import REPO_ROOT, command, run_command, run_trainer, trainer_args

pytestmark = pytest.mark.slow

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")
# 300 training images at batch 10: 30 steps an epoch, two epochs, checkpoints every 7 steps.
ARGS = ("--batch_size", "10", "--checkpoint_every", "7")


def read_metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for entry in metrics["history"]:
        entry.pop("seconds")  # wall-clock measurements are the one thing that may differ
        entry.pop("images_per_second")
    return metrics


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "model.pth").read_bytes() == (reference / "model.pth").read_bytes()
    assert read_metrics(run_dir) == read_metrics(reference)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("architectures")


def reference_run(dataset: Path, experiments: Path, architecture: str) -> Path:
    """The uninterrupted run of `architecture` (trained once per module) that the others must match."""
    reference = experiments / "e" / architecture
    if not reference.is_dir():
        result = run_trainer(*trainer_args(dataset, experiments, architecture, "--architecture", architecture, *ARGS))
        assert result.returncode == 0, result.stderr
    return reference


@pytest.mark.parametrize(
    "architecture, kill_at",
    [
        ("resnet18", "train:2:12"),  # batch norm: running statistics and their step counts
        ("mobilenet_v3_small", "train:1:17"),  # batch norm and dropout (which draws from torch's generator)
    ],
)
def test_repeats_are_byte_identical_and_a_killed_run_resumes_to_the_same_bytes(
    dataset, experiments, architecture, kill_at
):
    reference = reference_run(dataset, experiments, architecture)

    again = trainer_args(dataset, experiments, f"{architecture}-again", "--architecture", architecture, *ARGS)
    assert run_trainer(*again).returncode == 0
    assert_same_run(experiments / "e" / f"{architecture}-again", reference)

    crashed = trainer_args(dataset, experiments, f"{architecture}-crashed", "--architecture", architecture, *ARGS)
    killed = run_command([sys.executable, FAULT_INJECTION, "KILL", kill_at, *crashed], cwd=REPO_ROOT)
    assert killed.returncode == -9, killed.stderr
    resumed = run_trainer(*crashed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(experiments / "e" / f"{architecture}-crashed", reference)

    manifest = json.loads((reference / "run.json").read_text())
    assert manifest["arguments"]["architecture"] == architecture
    assert manifest["model_spec"] == {
        "architecture": architecture,
        "image_size": 32,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "classes": manifest["classes"],
    }
    # The weights really are that architecture's: they load into a freshly built one.
    from image_classifier.model.architectures import build_model
    from image_classifier.model.spec import spec_of_run

    model = build_model(spec_of_run(manifest))
    model.load_state_dict(torch.load(reference / "model.pth", weights_only=True))


def test_resume_refuses_another_architecture(dataset, tmp_path):
    args = trainer_args(dataset, tmp_path, "r", "--num_epochs", "1")
    killed = run_command([sys.executable, FAULT_INJECTION, "KILL", "train:1:3", *args], cwd=REPO_ROOT)
    assert killed.returncode == -9, killed.stderr
    refused = run_trainer(*args, "--architecture", "resnet18", "--resume")
    assert refused.returncode == 1
    assert "architecture: 'net' then, 'resnet18' now" in refused.stderr


def test_pretrained_weights_of_another_class_count_get_a_new_head(dataset, tmp_path):
    """As with torchvision's published ImageNet weights (1000 classes), downloaded by the user."""
    from image_classifier.model.architectures import build_model
    from image_classifier.model.spec import new_spec

    torch.manual_seed(42)
    imagenet = build_model(new_spec("resnet18", 224, [f"class{i}" for i in range(1000)])).state_dict()
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet, weights)
    args = trainer_args(dataset, tmp_path, "tuned", "--architecture", "resnet18", "--num_epochs", "0")
    result = run_trainer(*args, "--pretrained_model", str(weights), "--batch_size", "10")
    assert result.returncode == 0, result.stderr
    assert "replaced the classifier head fc (1000 outputs in" in result.stderr
    assert "by a new one for 10 classes" in result.stderr
    tuned = torch.load(tmp_path / "e" / "tuned" / "model.pth", weights_only=True)
    assert tuned["fc.weight"].shape == (10, 512)
    assert all(torch.equal(tuned[key], value) for key, value in imagenet.items() if not key.startswith("fc."))
    manifest = json.loads((tmp_path / "e" / "tuned" / "run.json").read_text())
    assert manifest["pretrained_model"]["path"] == str(weights)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--architecture", "resnet19"], "unknown architecture 'resnet19' (did you mean resnet18"),
        (["--architecture", "inception_v3"], "inception_v3 cannot take 32 x 32 images"),
        # 300 training images at batch 299: the last batch of each epoch holds one image.
        (["--architecture", "resnet18", "--batch_size", "299"], "resnet18 cannot train on a batch of one image"),
    ],
)
def test_a_model_that_cannot_run_is_one_error_line_before_the_run_exists(dataset, tmp_path, extra, message):
    result = run_trainer(*trainer_args(dataset, tmp_path, "refused", *extra))
    assert result.returncode == 1
    assert f"error: {message}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_reproduce_rebuilds_the_recorded_architecture(dataset, experiments):
    reference = reference_run(dataset, experiments, "resnet18")
    result = run_command([command("image_classifier_reproduce"), str(reference)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model.pth: identical" in result.stdout and "model_spec" not in result.stdout
    reproduced = json.loads((experiments / "e" / "resnet18-repro-1" / "run.json").read_text())
    assert reproduced["model_spec"]["architecture"] == "resnet18"


def test_reproduce_names_a_changed_model_spec():
    spec = {"architecture": "net", "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "classes": ["a", "b"]}
    changed = {"model_spec": {**spec, "mean": [0.485, 0.456, 0.406]}}
    assert environment_differences({"model_spec": spec}, changed) == [
        "model_spec.mean: [0.5, 0.5, 0.5] -> [0.485, 0.456, 0.406]"
    ]
    # A run of an earlier version (no spec; classes in metrics.json) and its reproduction with this version.
    older = ({}, {"class_accuracy": {"a": 50.0, "b": 50.0}})
    assert environment_differences(older[0], {"model_spec": spec}, older[1], None) == []


def test_the_runs_command_shows_each_runs_model(dataset, experiments, capsys):
    from image_classifier.tracking.runs import main

    for architecture in ("resnet18", "mobilenet_v3_small"):
        reference_run(dataset, experiments, architecture)
    folder = ("--experiments_folder", str(experiments))
    assert main(["list", "--format", "json", *folder]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["resnet18"]["architecture"], rows["resnet18"]["image_size"]) == ("resnet18", 32)
    assert rows["mobilenet_v3_small"]["architecture"] == "mobilenet_v3_small"
    assert main(["show", "e/resnet18", *folder]) == 0
    shown = capsys.readouterr().out
    assert "architecture  resnet18" in shown and "mean          0.485, 0.456, 0.406" in shown
    assert main(["compare", "e/resnet18", "e/mobilenet_v3_small", *folder]) == 0
    model = capsys.readouterr().out.split("\n\n")[0]
    assert model.splitlines()[0] == "model that differs"
    assert model.splitlines()[2].split() == ["architecture", "resnet18", "mobilenet_v3_small"]


def test_torchrun_trains_batch_norm_to_one_model_and_resumes_to_its_bytes(dataset, tmp_path):
    """Under torchrun each process's batches update its own batch-norm statistics (as DDP without
    SyncBatchNorm); evaluation and the saved model take rank 0's, so every process ends with the same model."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ("--architecture", "resnet18", "--num_epochs", "2", "--batch_size", "10", "--checkpoint_every", "4")
    whole = run_command([*launcher, "-m", "image_classifier.main", *trainer_args(dataset, tmp_path, "ddp", *args)])
    assert whole.returncode == 0, whole.stderr
    assert "weights identical on all 2 processes" in whole.stderr

    crashed = trainer_args(dataset, tmp_path, "crashed", *args)
    killed = run_command([*launcher, FAULT_INJECTION, "KILL", "train:2:6", *crashed], env={"FAULT_RANK": "1"})
    assert killed.returncode != 0 and not (tmp_path / "e" / "crashed").exists()
    resumed = run_command([*launcher, "-m", "image_classifier.main", *crashed, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "e" / "crashed", tmp_path / "e" / "ddp")


@pytest.mark.parametrize("name", ["ResNet18", "../net", "resnet 18", ""])
def test_a_malformed_architecture_name_is_a_usage_error(name, capsys):
    from image_classifier.main import main

    with pytest.raises(SystemExit) as stop:
        main(["--experiment_name", "e", "--run_name", "r", "--architecture", name, "--db_pass", "x"])
    assert stop.value.code == 2 and "invalid architecture name" in capsys.readouterr().err
