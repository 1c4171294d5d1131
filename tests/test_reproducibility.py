"""Bit-for-bit reproducibility, crash recovery and the proof command, through the installed commands."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from image_classifier.data.synthetic import generate_dataset
from image_classifier.run_comparison import environment_differences, metric_differences
from tests.conftest import PASSWORD, REPO_ROOT, RUN_FILES, command, run_command, run_trainer, trainer_args

pytestmark = pytest.mark.slow

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")


def read_metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for entry in metrics["history"]:
        entry.pop("seconds")  # wall-clock measurements are the one thing that may differ
        entry.pop("images_per_second")
    return metrics


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """One uninterrupted run that every other run here must match."""
    experiments = tmp_path_factory.mktemp("reference")
    result = run_trainer(*trainer_args(dataset, experiments, "reference"))
    assert result.returncode == 0, result.stderr
    return experiments / "e" / "reference"


def run_with_fault(signal_name: str, point: str, *args: str):
    return run_command([sys.executable, FAULT_INJECTION, signal_name, point, *args], cwd=REPO_ROOT)


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "model.pth").read_bytes() == (reference / "model.pth").read_bytes()
    assert read_metrics(run_dir) == read_metrics(reference)


def test_same_arguments_give_identical_bytes_and_another_seed_does_not(dataset, tmp_path, reference):
    assert run_trainer(*trainer_args(dataset, tmp_path, "again", "--num_workers", "0")).returncode == 0
    assert_same_run(tmp_path / "e" / "again", reference)
    assert run_trainer(*trainer_args(dataset, tmp_path, "seed1", "--seed", "1")).returncode == 0
    assert (tmp_path / "e" / "seed1" / "model.pth").read_bytes() != (reference / "model.pth").read_bytes()


@pytest.mark.parametrize(
    "point, extra",
    [
        ("train:1:3", []),  # early in epoch 1: only the start-of-run checkpoint exists
        ("train:2:37", ["--checkpoint_every", "10"]),  # inside epoch 2, after a mid-epoch checkpoint
        ("saved:2:0", []),  # between epochs, right after the end-of-epoch checkpoint
        ("evaluate:1", []),  # during the first evaluation
        ("evaluate:2", ["--checkpoint_every", "7"]),  # during the last evaluation
    ],
)
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_bytes(dataset, tmp_path, reference, point, extra):
    args = trainer_args(dataset, tmp_path, "crashed", *extra)
    killed = run_with_fault("KILL", point, *args)
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "e" / "crashed").exists()
    assert (tmp_path / "e" / "crashed.incomplete" / "checkpoint.pt").is_file()

    # Resumed with another thread count (as on another machine; the run chose 1 for batch 4): the run's own
    # count is restored.
    resumed = run_trainer(*args, "--resume", env={"OMP_NUM_THREADS": "3"})
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "e" / "crashed", reference)
    manifest = json.loads((tmp_path / "e" / "crashed" / "run.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["resumes"]) == 1
    assert not (tmp_path / "e" / "crashed" / "checkpoint.pt").exists()


@pytest.mark.parametrize("signal_name, point, exit_code", [("TERM", "train:1:20", 143), ("INT", "evaluate:2", 130)])
def test_sigterm_and_ctrl_c_stop_cleanly_with_a_checkpoint(dataset, tmp_path, reference, signal_name, point, exit_code):
    args = trainer_args(dataset, tmp_path, "stopped")
    stopped = run_with_fault(signal_name, point, *args)
    assert stopped.returncode == exit_code, stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    work_dir = tmp_path / "e" / "stopped.incomplete"
    assert (work_dir / "checkpoint.pt").is_file()
    assert json.loads((work_dir / "run.json").read_text())["status"] == "interrupted"

    resumed = run_trainer(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "e" / "stopped", reference)


@pytest.mark.parametrize(
    "point",
    [
        "written:checkpoint.pt:1",  # the first checkpoint, before run.json exists
        "written:run.json:1",  # both first files written, before the run directory appears
        "written:run.json:2",  # the run directory just appeared
        "written:model.pth:1",  # the model written, the other outputs not yet
        "written:metrics.png:1",  # the first figure written, the others not yet
        "written:confusion_matrix.png:1",  # every output but the final run.json
        "written:run.json:3",  # run.json says completed, the directory is not yet renamed
        "published",  # renamed to its final name, the checkpoint not yet removed
    ],
)
def test_a_kill_at_any_instant_leaves_a_run_that_restarts_or_resumes_to_the_same_bytes(
    dataset, tmp_path, reference, point
):
    args = trainer_args(dataset, tmp_path, "crashed")
    killed = run_with_fault("KILL", point, *args)
    assert killed.returncode == -9, killed.stderr
    # What a user (or a scheduler) does next: run it again; if told to, resume it.
    again = run_trainer(*args)
    if again.returncode != 0 and "continue it with --resume" in again.stderr:
        again = run_trainer(*args, "--resume")
    if again.returncode != 0 and "already exists" in again.stderr:  # it had finished: nothing to redo
        assert point == "published"
    else:
        assert again.returncode == 0, again.stderr
    assert_run_complete_without_leftovers(tmp_path / "e" / "crashed", reference)


def assert_run_complete_without_leftovers(run_dir: Path, reference: Path) -> None:
    assert_same_run(run_dir, reference)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES  # hidden temporary files included
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name]


@pytest.mark.parametrize(
    "point",
    [
        "torn:checkpoint.pt:1:1000",  # the first checkpoint, in the staging folder
        "torn:checkpoint.pt:3:100000",  # the checkpoint after epoch 1's evaluation, half written
        "torn:checkpoint.pt:5:100000",  # the last checkpoint: nothing writes one after it
        "torn:run.json:2:500",  # run.json as the run starts
        "torn:model.pth:1:100000",  # model.pth, written under its own name
        "torn:metrics.json:1:10",
        "torn:run.json:3:500",  # the final run.json
    ],
)
def test_a_kill_inside_a_write_leaves_a_run_that_restarts_or_resumes_to_the_same_bytes(
    dataset, tmp_path, reference, point
):
    args = trainer_args(dataset, tmp_path, "crashed")
    killed = run_with_fault("KILL", point, *args)
    assert killed.returncode == -9, killed.stderr
    again = run_trainer(*args)  # what a user does next: run it again, and resume it if told to
    if again.returncode != 0 and "continue it with --resume" in again.stderr:
        again = run_trainer(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert_run_complete_without_leftovers(tmp_path / "e" / "crashed", reference)


def _wait_until_stopped(process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {process.stderr.read()}")
        if Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1].startswith("T"):
            return
        time.sleep(0.2)
    raise AssertionError("the trainer never reached its stop point")


def test_a_second_process_on_the_same_run_is_refused_while_the_first_lives(dataset, tmp_path, reference):
    args = trainer_args(dataset, tmp_path, "busy")
    environment = {**os.environ, "DB_PASSWORD": "x"}
    first = subprocess.Popen(
        [sys.executable, FAULT_INJECTION, "STOP", "train:1:3", *args],
        cwd=REPO_ROOT,
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_stopped(first)  # frozen mid-epoch, holding its run directory
        for second in (run_trainer(*args), run_trainer(*args, "--resume")):
            assert second.returncode == 1 and "another process is running" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()
    resumed = run_trainer(*args, "--resume")  # the first is gone, and its lock with it
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "e" / "busy", reference)


def _tamper_checkpoint(work_dir: Path, change) -> None:
    path = work_dir / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint["manifest"])
    torch.save(checkpoint, path)


def test_resume_refuses_another_device_torch_or_code_unless_forced(dataset, tmp_path, reference):
    args = trainer_args(dataset, tmp_path, "moved")
    assert run_with_fault("KILL", "train:1:5", *args).returncode == -9

    def as_if_elsewhere(manifest: dict) -> None:
        manifest["device"] = "cuda:0"
        manifest["gpu"] = {"name": "NVIDIA H200", "driver": "570.86.15"}
        manifest["versions"]["torch"] = "2.0.0"
        manifest["code"]["sha256"] = "0" * 64
        manifest["platform"]["cpu_capability"] = "AVX2"

    assert json.loads((tmp_path / "e" / "moved.incomplete" / "run.json").read_text())["gpu"] is None  # a CPU run
    _tamper_checkpoint(tmp_path / "e" / "moved.incomplete", as_if_elsewhere)
    refused = run_trainer(*args, "--resume")
    assert refused.returncode == 1, refused.stderr
    for named in (
        "device: 'cuda' -> 'cpu'",  # compared by type: any cuda:<n> is a GPU
        "gpu.name: 'NVIDIA H200' -> None",
        "versions.torch: '2.0.0'",
        "code.sha256: '0000",
        "--force",
    ):
        assert named in refused.stderr
    assert "cpu_capability" not in refused.stderr  # recorded and warned about, not a reason to refuse

    forced = run_trainer(*args, "--resume", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "cpu_capability: 'AVX2'" in forced.stderr  # the warning
    manifest = json.loads((tmp_path / "e" / "moved" / "run.json").read_text())
    (resume,) = manifest["resumes"]
    forced_keys = [line.split(":")[0] for line in resume["forced"]]
    assert forced_keys == ["code.sha256", "device", "gpu.name", "versions.torch"]
    assert resume["environment"]["device"] == "cpu" and manifest["device"] == "cuda:0"  # start record kept
    assert resume["environment"]["gpu"] is None and manifest["gpu"]["name"] == "NVIDIA H200"
    assert resume["environment"]["platform"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_diverged_run_writes_strict_json_and_says_so(dataset, tmp_path):
    args = trainer_args(dataset, tmp_path, "huge", "--learning_rate", "1e30", "--num_epochs", "1")
    result = run_trainer(*args)
    assert result.returncode == 0, result.stderr
    assert "training diverged" in result.stderr
    run_dir = tmp_path / "e" / "huge"
    for name in ("metrics.json", "run.json"):
        json.loads((run_dir / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))
    assert json.loads((run_dir / "metrics.json").read_text())["history"][0]["train_loss"] is None
    assert json.loads((run_dir / "run.json").read_text())["diverged"] is True


def test_resume_refusals(dataset, tmp_path):
    nothing = run_trainer(*trainer_args(dataset, tmp_path, "never", "--resume"))
    assert nothing.returncode == 1 and "nothing to resume" in nothing.stderr

    args = trainer_args(dataset, tmp_path, "r")
    assert run_with_fault("KILL", "train:1:5", *args).returncode == -9
    restart = run_trainer(*args)
    assert restart.returncode == 1 and "--resume" in restart.stderr
    changed = run_trainer(*args, "--resume", "--seed", "5", "--learning_rate", "0.01")
    assert changed.returncode == 1
    assert "learning_rate: 0.001 then, 0.01 now" in changed.stderr and "seed: 0 then, 5 now" in changed.stderr

    assert run_trainer(*args, "--resume", "--num_workers", "0").returncode == 0  # workers never change results
    again = run_trainer(*args, "--resume")
    assert again.returncode == 1 and "cannot be resumed or overwritten" in again.stderr


def test_resume_refuses_a_changed_dataset_and_continues_once_it_is_restored(dataset, tmp_path, reference):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    args = trainer_args(data, tmp_path, "r")
    assert run_with_fault("KILL", "train:2:5", *args).returncode == -9
    batch = data / "cifar-10-batches-py" / "data_batch_3"
    original = batch.read_bytes()
    payload = bytearray(original)
    payload[-3000] ^= 0xFF  # one pixel's value
    batch.write_bytes(bytes(payload))

    refused = run_trainer(*args, "--resume")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(
        f"error: the dataset in {data} changed since the interrupted run (cifar-10-batches-py/data_batch_3 changed)"
    )
    assert not (tmp_path / "e" / "r").exists() and (tmp_path / "e" / "r.incomplete" / "checkpoint.pt").is_file()

    batch.write_bytes(original)
    resumed = run_trainer(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_run_complete_without_leftovers(tmp_path / "e" / "r", reference)


def test_resume_refuses_a_checkpoint_whose_dataset_hash_is_missing(dataset, tmp_path):
    args = trainer_args(dataset, tmp_path, "r")
    assert run_with_fault("KILL", "train:1:5", *args).returncode == -9
    path = tmp_path / "e" / "r.incomplete" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "dataset_sha256": None}, path)
    refused = run_trainer(*args, "--resume")
    assert refused.returncode == 1, refused.stderr
    assert f"error: the dataset in {dataset} changed since the interrupted run" in refused.stderr


@pytest.mark.parametrize("signal_name, point", [("KILL", "train:2:5"), ("TERM", "evaluate:2")])
def test_an_unfinished_run_holds_no_secret(dataset, tmp_path, signal_name, point):
    args = trainer_args(dataset, tmp_path, "r", "--checkpoint_every", "10")
    stopped = run_with_fault(signal_name, point, *args)  # DB_PASSWORD is set: run_command sets PASSWORD
    assert stopped.returncode in (-9, 143), stopped.stderr
    work_dir = tmp_path / "e" / "r.incomplete"
    files = sorted(p.name for p in work_dir.iterdir())
    assert files == ["checkpoint.pt", "run.json"]
    for name in files:
        assert PASSWORD.encode() not in (work_dir / name).read_bytes(), name
    assert PASSWORD not in stopped.stdout + stopped.stderr


def test_reproduce_passes_on_a_fresh_run(reference):
    # Reproduce into a copy, so that the shared reference run stays as it is.
    copy = reference.parent.parent / "copy" / "e" / "reference"
    shutil.copytree(reference, copy)
    result = run_command([command("image_classifier_reproduce"), str(copy), "--verbose"])
    assert result.returncode == 0, result.stderr
    assert "REPRODUCED" in result.stdout and "environment: unchanged" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr  # with --verbose's debug logging too
    for path in (copy.parent / "reference-repro-1").iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path
    digest = json.loads((copy / "run.json").read_text())["model_sha256"]
    assert result.stdout.count(digest) == 2
    assert (copy.parent / "reference-repro-1" / "model.pth").read_bytes() == (copy / "model.pth").read_bytes()


def test_reproduce_fails_and_names_the_data_when_the_dataset_changed(dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    assert run_trainer(*trainer_args(data, tmp_path, "r", "--num_epochs", "1")).returncode == 0
    batch = data / "cifar-10-batches-py" / "data_batch_2"
    payload = bytearray(batch.read_bytes())
    payload[-5000:-4000] = bytes(255 - b for b in payload[-5000:-4000])  # invert some pixels
    batch.write_bytes(bytes(payload))

    result = run_command([command("image_classifier_reproduce"), str(tmp_path / "e" / "r")])
    assert result.returncode == 1, result.stderr
    assert "NOT REPRODUCED" in result.stdout and "model.pth: DIFFERENT" in result.stdout
    assert "dataset.sha256.cifar-10-batches-py/data_batch_2" in result.stdout


def test_reproduce_works_from_inside_the_experiment_folder_with_relative_paths(dataset, tmp_path):
    shutil.copytree(dataset, tmp_path / "data")
    made = run_trainer(
        "--experiment_name", "e", "--run_name", "r", "--dataset_folder", "data", "--num_epochs", "1", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    result = run_command([command("image_classifier_reproduce"), "r"], cwd=tmp_path / "experiments" / "e")
    assert result.returncode == 0, result.stderr
    assert "REPRODUCED" in result.stdout
    assert (tmp_path / "experiments" / "e" / "r-repro-1" / "model.pth").is_file()


def test_reproduce_refuses_when_the_pretrained_model_changed(dataset, tmp_path, reference):
    shutil.copy(reference / "model.pth", tmp_path / "start.pth")
    args = trainer_args(
        dataset, tmp_path, "tuned", "--num_epochs", "1", "--pretrained_model", str(tmp_path / "start.pth")
    )
    assert run_trainer(*args).returncode == 0
    manifest = json.loads((tmp_path / "e" / "tuned" / "run.json").read_text())
    assert manifest["pretrained_model"]["sha256"] == json.loads((reference / "run.json").read_text())["model_sha256"]

    with (tmp_path / "start.pth").open("ab") as stream:
        stream.write(b"changed")
    result = run_command([command("image_classifier_reproduce"), str(tmp_path / "e" / "tuned")])
    assert result.returncode == 1 and "bytes changed" in result.stderr and "start.pth" in result.stderr


def test_reproduce_refuses_what_is_not_a_completed_run(tmp_path):
    result = run_command([command("image_classifier_reproduce"), str(tmp_path)])
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "no run.json" in result.stderr


def test_difference_reports():
    assert (
        metric_differences(
            {"test_accuracy": 50.0, "history": [{"epoch": 1, "seconds": 1}]},
            {
                "test_accuracy": 50.0,
                "history": [{"epoch": 1, "seconds": 2}],
            },
        )
        == []
    )
    assert metric_differences({"test_accuracy": 50.0}, {"test_accuracy": 51.0}) == ["test_accuracy: 50.0 -> 51.0"]
    before = {"versions": {"torch": "2.14.1"}, "dataset": {"folder": "/a", "sha256": {"x": "1"}}, "device": "cpu"}
    after = {"versions": {"torch": "2.15.0"}, "dataset": {"folder": "/b", "sha256": {"x": "1"}}, "device": "cpu"}
    assert environment_differences(before, after) == ["versions.torch: '2.14.1' -> '2.15.0'"]
    before["device"], before["platform"] = "cuda:0", {"cpu_capability": "AVX2"}
    after["platform"] = {"cpu_capability": "AVX512"}
    assert environment_differences(before, after)[:2] == [
        "device: 'cuda:0' -> 'cpu'",
        "platform.cpu_capability: 'AVX2' -> 'AVX512'",
    ]


OLDER_RUN = REPO_ROOT / "tests" / "fixtures" / "older_experiments" / "local_exp_test" / "run_1"


def _as_if_written_by_version_1_0_0(run_dir: Path) -> None:
    """Rewrite a run's run.json the way version 1.0.0 wrote it: without the options added since."""
    manifest = json.loads((run_dir / "run.json").read_text())
    known_then = json.loads((OLDER_RUN / "run.json").read_text())["arguments"]
    manifest["arguments"] = {key: value for key, value in manifest["arguments"].items() if key in known_then}
    manifest["versions"]["image_classifier"] = "1.0.0"
    (run_dir / "run.json").write_text(json.dumps(manifest, indent=4))


def test_version_1_0_0s_example_run_reproduces_today(tmp_path):
    """The real thing: the run version 1.0.0 committed, re-run by today's code on its own sample dataset."""
    generate_dataset(tmp_path / "data" / "sample_dataset", 5000, 1000, seed=0)  # make data's dataset
    shutil.copytree(OLDER_RUN.parent.parent, tmp_path / "experiments")  # the run folder is never written to
    # 2 epochs of 5,000 images at batch 4: about a minute on a quiet 2-core machine, ten on a busy one.
    reproduce = [command("image_classifier_reproduce"), "experiments/local_exp_test/run_1"]
    result = run_command(reproduce, cwd=tmp_path, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "model.pth: same weights (a file laid out by version 1.0.0)" in result.stdout
    assert "metrics: identical" in result.stdout and "REPRODUCED" in result.stdout
    assert "dataset" not in result.stdout  # the same dataset bytes as then


def test_a_run_of_an_older_version_is_reproduced_with_that_versions_settings(dataset, tmp_path):
    # What version 1.0.0 did, in today's options: contiguous tensors, evaluation at the training batch size.
    then = ("--no-channels_last", "--eval_batch_size", "4", "--num_epochs", "1")
    assert run_trainer(*trainer_args(dataset, tmp_path, "old", *then)).returncode == 0
    _as_if_written_by_version_1_0_0(tmp_path / "e" / "old")

    result = run_command([command("image_classifier_reproduce"), str(tmp_path / "e" / "old")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REPRODUCED" in result.stdout and "model.pth: identical" in result.stdout
    arguments = json.loads((tmp_path / "e" / "old-repro-1" / "run.json").read_text())["arguments"]
    assert (arguments["channels_last"], arguments["eval_batch_size"], arguments["amp"]) == (False, 4, False)
