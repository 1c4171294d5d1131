"""Training on image folders through the installed commands: bad images, --augment's exact repeats and
resumes, runs sharing one prepared cache, reproduce naming a changed file, torchrun."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classifier.data.synthetic import CLASSES, generate_image_folder
from tests.conftest import PASSWORD, REPO_ROOT, command, run_command, run_trainer, trainer_args
from tests.data.folders import jpeg, write

pytestmark = pytest.mark.slow

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")
# 16 images a batch over 150 training images: 10 steps an epoch, the last one short.
FAST = ("--batch_size", "16", "--learning_rate", "0.01")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """train/ and test/ of the ten classes: PNG and JPEG of 20-48 pixels, in RGB, grey, RGBA and palette modes."""
    return generate_image_folder(tmp_path_factory.mktemp("images") / "data", 150, 40, seed=0, min_side=20, max_side=48)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(image_folder, cache, tmp_path_factory) -> Path:
    """One uninterrupted --augment run that the repeats and the resumed run must match byte for byte."""
    experiments = tmp_path_factory.mktemp("reference")
    result = run_trainer(
        *trainer_args(image_folder, experiments, "ref", *FAST, "--augment", "--cache_folder", str(cache))
    )
    assert result.returncode == 0, result.stderr
    return experiments / "e" / "ref"


def model_bytes(run_dir: Path) -> bytes:
    return (run_dir / "model.pth").read_bytes()


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_a_run_records_the_folder_its_files_and_the_augmentation(reference, image_folder):
    manifest = run_json(reference)
    dataset = manifest["dataset"]
    assert dataset["format"] == "image folder" and dataset["layout"] == "train/ + test/"
    assert dataset["images"] == {"train": 150, "test": 40} and dataset["conversion"]["image_size"] == 32
    files = manifest["dataset_manifest"]["files"]
    assert len(files) == 190 and set(manifest["dataset_manifest"]["classes"]) == set(manifest["classes"])
    some_file = next(iter(files))
    assert files[some_file]["sha256"] == hashlib.sha256((image_folder / some_file).read_bytes()).hexdigest()
    assert manifest["arguments"]["augment"] is True
    assert manifest["augmentation"] == {"random_crop_padding": 4, "padding_fill": "black", "horizontal_flip": 0.5}


def test_augmented_runs_repeat_byte_for_byte_and_resume_exactly_after_a_kill(reference, image_folder, cache, tmp_path):
    args = trainer_args(image_folder, tmp_path, "again", *FAST, "--augment", "--cache_folder", str(cache))
    again = run_trainer(*args)
    assert again.returncode == 0, again.stderr
    assert "reusing the prepared dataset" in again.stderr
    assert model_bytes(tmp_path / "e" / "again") == model_bytes(reference)

    args = trainer_args(image_folder, tmp_path, "killed", *FAST, "--augment", "--checkpoint_every", "3")
    env = {"IMAGE_CLASSIFIER_CACHE": str(cache)}
    killed = run_command([sys.executable, FAULT_INJECTION, "KILL", "train:2:7", *args], cwd=REPO_ROOT, env=env)
    assert killed.returncode == -9 and not (tmp_path / "e" / "killed").exists()
    # Checkpoints leave out the list of files (150 bytes a file, pickled at every checkpoint); the dataset's
    # hash holds the resume to the same files, and the resumed run.json lists them all again.
    checkpoint = torch.load(tmp_path / "e" / "killed.incomplete" / "checkpoint.pt", weights_only=False)
    assert "dataset_manifest" not in checkpoint["manifest"] and checkpoint["manifest"]["dataset"]["images"]
    resumed = run_trainer(*args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, step 6" in resumed.stderr  # the last checkpoint, mid-epoch
    assert model_bytes(tmp_path / "e" / "killed") == model_bytes(reference)
    assert run_json(tmp_path / "e" / "killed")["dataset_manifest"] == run_json(reference)["dataset_manifest"]


def test_bad_images_stop_the_run_before_it_starts_and_skipping_them_is_recorded(image_folder, tmp_path):
    folder = shutil.copytree(image_folder, tmp_path / "data")
    write(folder / "train" / "cat" / "broken photo.jpg", jpeg(1, (64, 64))[:400])
    write(folder / "train" / "dog" / "._dog_train_000001.png", b"\x00\x05\x16\x07")
    write(folder / "train" / ".DS_Store", b"Bud1")
    write(folder / "metadata.json", json.dumps({"classes": sorted(CLASSES, reverse=True)}).encode())
    experiments, cache = tmp_path / "experiments", tmp_path / "cache"
    args = trainer_args(folder, experiments, "r", *FAST, "--num_epochs", "1", "--cache_folder", str(cache))
    stopped = run_trainer(*args)
    assert stopped.returncode == 1
    assert "error: 1 bad image(s) in" in stopped.stderr and "  train/cat/broken photo.jpg: " in stopped.stderr
    assert not experiments.exists()  # found before the run directory, let alone the first step

    skipped = run_trainer(*args, "--skip_bad_images")
    assert skipped.returncode == 0, skipped.stderr
    assert "reusing the prepared dataset" in skipped.stderr  # the failed run's decoding is kept
    manifest = run_json(experiments / "e" / "r")
    assert [item["path"] for item in manifest["dataset_manifest"]["bad_images"]] == ["train/cat/broken photo.jpg"]
    assert manifest["dataset"]["skipped"] == {"hidden_or_system": 2}
    assert manifest["classes"] == ["truck", "ship", "plane", "horse", "frog", "dog", "deer", "cat", "car", "bird"]
    assert manifest["dataset"]["classes_from"] == "metadata.json"

    # A changed image: reproduce trains again on what the folder holds now and names the file.
    changed = sorted((folder / "test" / "cat").iterdir())[0]
    changed.write_bytes(jpeg(7, (30, 30)))
    reproduced = run_command(
        [command("image_classifier_reproduce"), str(experiments / "e" / "r")], cwd=REPO_ROOT, password=PASSWORD
    )
    assert reproduced.returncode == 1, reproduced.stderr
    assert f"dataset_manifest: changed: test/cat/{changed.name}" in reproduced.stdout
    assert "NOT REPRODUCED" in reproduced.stdout


def test_two_runs_started_together_share_one_prepared_cache(reference, image_folder, tmp_path):
    cache = tmp_path / "cache"
    environment = {k: v for k, v in os.environ.items() if k != "DB_PASSWORD"}
    environment.update(DB_PASSWORD=PASSWORD, IMAGE_CLASSIFIER_CACHE=str(cache))
    runs = [
        subprocess.Popen(
            [command("image_classifier_trainer"), *trainer_args(image_folder, tmp_path, name, *FAST)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    logs = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert sum("preparing 190 files" in log for log in logs) == 1, logs
    assert [path.suffix for path in cache.iterdir()].count("") == 1  # one prepared folder (and its lock file)
    assert model_bytes(tmp_path / "e" / "one") == model_bytes(tmp_path / "e" / "two")
    assert model_bytes(tmp_path / "e" / "one") != model_bytes(reference)  # --augment changed what was learnt


def test_torchrun_ranks_train_on_one_prepared_folder(image_folder, tmp_path):
    cache = tmp_path / "cache"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = trainer_args(image_folder, tmp_path, "ddp", *FAST, "--augment", "--cache_folder", str(cache))
    result = run_command([*launcher, "-m", "image_classifier.main", *args], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "weights identical on all 2 processes" in result.stderr
    manifest = run_json(tmp_path / "e" / "ddp")
    assert manifest["world_size"] == 2
    prepared = [path for path in cache.iterdir() if path.is_dir()]
    assert [str(path) for path in prepared] == [manifest["dataset"]["prepared"]["folder"]]


def test_a_torchvision_model_on_an_image_folder_trains_and_evaluates_with_its_specs_normalisation(tmp_path):
    """Batches read from the mapped folder are normalised with the spec's mean and std (ImageNet's for
    torchvision models), as serving will: the run's own evaluation equals an offline one made that way."""
    import torch

    from image_classifier.data.batches import iterate_batches
    from image_classifier.data.data import DataOptions, load_train_test_data
    from image_classifier.model.architectures import build_model
    from image_classifier.model.spec import ModelSpec
    from image_classifier.model.validation import evaluate

    folder = generate_image_folder(tmp_path / "data", 40, 20, seed=3, min_side=16, max_side=40)
    cache = tmp_path / "cache"
    args = trainer_args(folder, tmp_path, "resnet", "--architecture", "resnet18", "--batch_size", "8")
    result = run_trainer(*args, "--num_epochs", "1", "--cache_folder", str(cache), "--num_threads", "1")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "e" / "resnet"
    spec = ModelSpec.from_dict(run_json(run_dir)["model_spec"])
    assert spec.mean != (0.5, 0.5, 0.5)  # ImageNet's: not the notebook's, which a forgotten argument would give

    data = load_train_test_data(folder, DataOptions(cache_folder=cache))
    model = build_model(spec)
    model.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))
    torch.set_num_threads(1)
    offline = evaluate(
        model, iterate_batches(data.test, 1000, torch.device("cpu"), mean=spec.mean, std=spec.std), spec.classes
    )
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert recorded["confusion_matrix"] == offline["confusion_matrix"]
    assert abs(recorded["test_loss"] - offline["test_loss"]) < 1e-4
