"""What a training run records: run.json when it starts, each resume and its MLflow run; metrics.json's epochs.

Nothing here imports torch: these are plain records (`manifest.py` holds how such records are read and
compared).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from image_classifier.clock import utc_timestamp
from image_classifier.config import TrainConfig
from image_classifier.model.spec import SPEC_KEY, ModelSpec
from image_classifier.run_dir import sha256_of

if TYPE_CHECKING:
    from image_classifier.data.batches import BatchAugmentation
    from image_classifier.data.data import TrainTestData
    from image_classifier.model.training import EpochProgress

DATASET_MANIFEST_KEY = "dataset_manifest"  # run.json's list of an image folder's files


def pretrained_record(config: TrainConfig) -> dict | None:
    """run.json's "pretrained_model": the weights' file and sha256, and the registry version it came from."""
    if config.pretrained_model is None:
        return None
    record = {"path": str(config.pretrained_model), "sha256": sha256_of(config.pretrained_model)}
    if config.pretrained_model_uri is not None:
        record.update(uri=config.pretrained_model_uri, version=config.pretrained_model_version)
    return record


def new_manifest(
    config: TrainConfig,
    environment: dict,
    determinism: dict,
    data: TrainTestData,
    spec: ModelSpec,
    pretrained: dict | None,
    augment: BatchAugmentation | None,
) -> dict:
    """run.json of a run that starts now (its keys in this order: the file's bytes depend on it)."""
    manifest = {
        "status": "running",
        "arguments": config.to_dict(),
        "seed": config.seed,
        "determinism": determinism,
        **environment,
        "dataset": {"folder": str(config.dataset_folder), **data.record},
        SPEC_KEY: spec.to_dict(),
        "classes": list(data.classes),  # also in the spec; kept for readers of earlier versions
        "pretrained_model": pretrained,
        "model_sha256": None,
        "diverged": False,
        "started_at": utc_timestamp(),
        "resumes": [],
        "finished_at": None,
    }
    if augment is not None:
        manifest["augmentation"] = augment.record()
    if data.manifest is not None:  # every file of an image folder: last, as it is long
        manifest[DATASET_MANIFEST_KEY] = data.manifest
    return manifest


def record_resume(manifest: dict, environment: dict, forced: list[str]) -> None:
    """Add this resume to run.json's "resumes": when, where, and what --force let through."""
    manifest["resumes"].append({"at": utc_timestamp(), "environment": environment, "forced": forced})


def record_tracking(manifest: dict, run_logger) -> None:
    """run.json's "mlflow": the server (without credentials), the MLflow run and the log calls lost."""
    record = run_logger.record()
    if record is not None:
        manifest["mlflow"] = record


def epoch_record(
    progress: EpochProgress, mean_loss: float, metrics: dict, train_seconds: float, train_images: int
) -> dict:
    """One entry of metrics.json's history: the epoch's losses, accuracies, time and training throughput."""
    return {
        "epoch": progress.epoch,
        "train_loss": mean_loss,
        "test_loss": metrics["test_loss"],
        "test_accuracy": metrics["test_accuracy"],
        "class_accuracy": metrics["class_accuracy"],
        "seconds": round(progress.seconds, 3),
        # Training only (evaluation excluded), over every process that worked on this epoch (resumes).
        "images_per_second": round(train_images / train_seconds, 1) if train_seconds > 0 else None,
    }
