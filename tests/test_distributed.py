"""Training under torchrun: 2 CPU processes with gloo, started by the real launcher (torch.distributed.run).

`python -m torch.distributed.run` is the `torchrun` console script's own entry point; it is started through
this environment's interpreter, so the launcher and every process it starts run this checkout's package.
"""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from image_classifier.distributed import weights_digest
from image_classifier.model.model import Net
from image_classifier.run_comparison import TIMING_FIELDS
from image_classifier.run_dir import sha256_of
from tests.conftest import PASSWORD, REPO_ROOT, command, run_command, run_trainer, trainer_args

pytestmark = pytest.mark.slow

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")
# A learning rate at which 300 images teach the model something in 3 epochs, so accuracies are informative.
LEARNING = ("--learning_rate", "0.02", "--num_epochs", "3")
# The 2 processes at batch 4 take, step by step, the same 8 images as one process at batch 8 and average
# the same gradients, rounded differently: the accuracies may differ by a few test images, not more.
ACCURACY_TOLERANCE = 100 * 2 / 97  # percentage points: 2 of the 97 test images


def torchrun(*args: str, env: dict | None = None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return run_command([*launcher, *args], cwd=REPO_ROOT, env=env)


def trainer_module(*args: str) -> list[str]:
    return ["-m", "image_classifier.main", *args]


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(dataset, tmp_path_factory):
    experiments = tmp_path_factory.mktemp("torchrun")
    result = torchrun(*trainer_module(*trainer_args(dataset, experiments, "ddp", *LEARNING)))
    assert result.returncode == 0, result.stderr
    return experiments / "e" / "ddp", result


def test_two_processes_train_one_model_that_matches_one_process(dataset, tmp_path, two_process_run):
    run_dir, result = two_process_run
    assert "weights identical on all 2 processes" in result.stderr
    # The logged hash says what it hashes: the tensors, which model.pth's sha256 (of the file) is not.
    logged = re.search(
        r"\(sha256 of the weight tensors ([0-9a-f]{64}); model.pth's sha256, of the file, ", result.stderr
    )
    assert logged, result.stderr
    net = Net()
    net.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))
    assert logged.group(1) == weights_digest(net)
    assert (
        logged.group(1)
        != json.loads((run_dir / "run.json").read_text())["model_sha256"]
        == sha256_of(run_dir / "model.pth")
    )
    assert result.stderr.count("epoch 1/3:") == 1  # rank 0 alone logs
    assert result.stdout.count("run written to") == 1
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "completed"
    assert sorted(path.name for path in run_dir.parent.iterdir()) == ["ddp"]

    # One process at the global batch size (2 x 4) sees the same images in the same steps.
    single = run_trainer(*trainer_args(dataset, tmp_path, "single", *LEARNING, "--batch_size", "8"))
    assert single.returncode == 0, single.stderr
    ddp_accuracy = metrics_of(run_dir)["test_accuracy"]
    assert ddp_accuracy > 30  # far above chance (10 %): the comparison below means something
    assert abs(ddp_accuracy - metrics_of(tmp_path / "e" / "single")["test_accuracy"]) <= ACCURACY_TOLERANCE


def test_a_killed_process_fails_the_run_which_resumes_to_the_same_bytes(dataset, tmp_path, two_process_run):
    reference, _ = two_process_run
    args = trainer_args(dataset, tmp_path, "ddp", *LEARNING, "--checkpoint_every", "10")
    killed = torchrun(FAULT_INJECTION, "KILL", "train:2:25", *args, env={"FAULT_RANK": "1"})
    assert killed.returncode != 0
    assert "rank      : 1" in killed.stderr and "SIGKILL" in killed.stderr  # torchrun names the culprit
    assert not (tmp_path / "e" / "ddp").exists()  # nothing published
    assert (tmp_path / "e" / "ddp.incomplete" / "checkpoint.pt").is_file()

    # The same number of processes is needed to resume: one alone is refused, before any work.
    alone = run_trainer(*args, "--resume")
    assert alone.returncode == 1
    assert "error: the run was started by 2 process(es) and is resumed by 1" in alone.stderr

    resumed = torchrun(*trainer_module(*args, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "e" / "ddp" / "model.pth").read_bytes() == (reference / "model.pth").read_bytes()
    history = [
        {k: v for k, v in entry.items() if k not in TIMING_FIELDS}
        for entry in metrics_of(tmp_path / "e" / "ddp")["history"]
    ]
    expected = [
        {k: v for k, v in entry.items() if k not in TIMING_FIELDS} for entry in metrics_of(reference)["history"]
    ]
    assert history == expected


def test_reproduce_re_runs_a_torchrun_run_with_its_world_size(two_process_run, tmp_path):
    recorded, _ = two_process_run
    copy = tmp_path / "experiments" / "e" / "ddp"  # a copy: the shared run stays as it is
    shutil.copytree(recorded, copy)
    result = run_command([command("image_classifier_reproduce"), str(copy)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-run by 2 torchrun processes, as recorded" in result.stdout and "REPRODUCED" in result.stdout
    assert "model.pth: identical" in result.stdout and "environment: unchanged" in result.stdout
    assert json.loads((copy.parent / "ddp-repro-1" / "run.json").read_text())["world_size"] == 2
    assert PASSWORD not in result.stdout + result.stderr  # it reached the processes through their environment
