"""The checkpoint's format, and what `--resume` checks before it continues a run.

A checkpoint is a dict saved by `torch.save` (built by `capture`, read back by `restore`): the weights, the
optimiser, the position in the epoch, every RNG state, and plain records: the run's arguments
(`TrainConfig.result_fields()`), the dataset's file hashes, the job's size and run.json's manifest with the
environment the run started (and each time resumed) in. The checks compare those plain records with the
ones of the process that resumes, so they need no torch and no GPU to be tested: torch is imported only
inside `capture` and `restore`, never when this module is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.config import TrainConfig
from image_classifier.errors import RunDirectoryError
from image_classifier.manifest import differences
from image_classifier.run_record import DATASET_MANIFEST_KEY

if TYPE_CHECKING:
    import torch

    from image_classifier.distributed import Runtime
    from image_classifier.model.training import EpochProgress
    from image_classifier.run_dir import RunDirectory

CHECKPOINT_FORMAT = 2

# What --resume refuses to mix into one run (unless --force): each changes the bytes the run produces.
# The device is compared by its type (cpu, cuda), not its index: under torchrun rank 1 computes on cuda:1
# while run.json names rank 0's cuda:0, and a GPU of the same model gives the same bytes at any index.
# Other environment differences (the GPU driver, CPU capability, platform, numpy...) are recorded and
# warned about.
RESUME_MUST_MATCH = ("device", "gpu.name", "versions.torch", "code.sha256")

# Resolved from --pretrained_model models:/NAME@ALIAS (or /VERSION) when the run started. A resume takes
# them from the checkpoint and never asks the registry again: the alias may have moved since, the source run
# may be gone, the tracking server may be down, and the weights are in the checkpoint anyway.
RESOLVED_FROM_URI = ("pretrained_model", "pretrained_model_version")


@dataclasses.dataclass
class RunState:
    """What changes as the run goes on; saved in every checkpoint."""

    progress: EpochProgress
    # What run.json says; kept in the checkpoint (but for an image folder's list of files, see `capture`),
    # so a resume never depends on run.json.
    manifest: dict
    order: torch.Tensor | None = None  # this epoch's data order, drawn when the epoch starts
    history: list[dict] = dataclasses.field(default_factory=list)


def capture(session, state: RunState) -> dict:
    """The checkpoint of `session` (a `trainer.TrainingSession`) at `state`; a collective under torchrun:
    every rank calls it."""
    import torch

    from image_classifier.reproducibility import capture_rng_state

    runtime = session.runtime
    # Every rank's own loss sums: each rank resumes its part of the epoch's mean loss exactly.
    rank_losses = runtime.gather([state.progress.loss_sum, state.progress.window_loss_sum])
    rng = {**capture_rng_state(), "shuffle": session.shuffle.get_state()}
    if session.augment is not None:  # each rank draws its own augmentation: every rank's state is kept
        rng["augment_by_rank"] = runtime.gather(session.augment.generator.get_state())
    return {
        "format": CHECKPOINT_FORMAT,
        "config": session.config.result_fields(),
        "dataset_sha256": session.data.fingerprint,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "progress": dataclasses.asdict(state.progress),
        # Without an image folder's list of files: about 150 bytes a file (150 MB for a million images),
        # pickled again at every checkpoint. The dataset's hash above holds a resume to the same files,
        # and `restore` puts the list back from them.
        "manifest": {key: value for key, value in state.manifest.items() if key != DATASET_MANIFEST_KEY},
        "order": state.order,
        "history": state.history,
        "rng": rng,
        "torch_num_threads": torch.get_num_threads(),
        "world_size": runtime.world_size,
        "rank_losses": rank_losses,
    }


def restore(session, checkpoint: dict) -> RunState:
    """Put `checkpoint` back into `session` (weights, optimiser, generators); return the run's state."""
    from image_classifier.model.training import EpochProgress
    from image_classifier.reproducibility import restore_rng_state

    session.model.load_state_dict(checkpoint["model"])
    session.optimizer.load_state_dict(checkpoint["optimizer"])
    restore_rng_state(checkpoint["rng"])
    session.shuffle.set_state(checkpoint["rng"]["shuffle"])
    if session.augment is not None:
        session.augment.generator.set_state(checkpoint["rng"]["augment_by_rank"][session.runtime.rank])
    progress = EpochProgress(**checkpoint["progress"])
    if "rank_losses" in checkpoint:
        progress.loss_sum, progress.window_loss_sum = checkpoint["rank_losses"][session.runtime.rank]
    manifest = dict(checkpoint["manifest"])
    if session.data.manifest is not None:  # the same files: check_dataset compared their hash first
        manifest[DATASET_MANIFEST_KEY] = session.data.manifest
    return RunState(
        progress=progress,
        manifest=manifest,
        order=checkpoint["order"],
        history=list(checkpoint["history"]),
    )


def open_checkpoint(config: TrainConfig, run_dir: RunDirectory, runtime: Runtime) -> dict | None:
    """The checkpoint to resume from (None for a new run), on every rank; rank 0 checks it and the run."""
    if runtime.is_main_process():
        if config.resume:
            checkpoint = run_dir.open_for_resume()  # locks the unfinished run for this process
            check_format(checkpoint)
            check_arguments(checkpoint["config"], config.result_fields())
            # Checkpoints from before torchrun support were written by one process.
            check_world_size(checkpoint.get("world_size", 1), runtime.world_size)
        else:
            run_dir.check_can_start()  # before any work: a refused run touches nothing
            checkpoint = None
    else:
        checkpoint = None
    return runtime.broadcast_from_main(checkpoint) if config.resume else checkpoint


def check_format(checkpoint: dict) -> None:
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RunDirectoryError(
            f"the checkpoint's format {checkpoint.get('format')} is not {CHECKPOINT_FORMAT}: it was written by "
            "another version of the trainer; delete the unfinished run folder to start again"
        )


def _unresolved_uri(arguments: dict) -> bool:
    """A models:/ URI given on this command line, not yet resolved (main() leaves pretrained_model empty)."""
    return arguments.get("pretrained_model_uri") is not None and arguments.get("pretrained_model") is None


def check_arguments(recorded: dict, given: dict) -> None:
    """Refuse a resume whose result-determining arguments differ from the interrupted run's.

    A field added since the checkpoint was written counts as its default (what that version ran with).
    """
    recorded = {**TrainConfig.default_result_fields(), **recorded}
    skipped = RESOLVED_FROM_URI if _unresolved_uri(given) else ()
    differing = sorted(
        key for key in recorded.keys() | given.keys() if key not in skipped and recorded.get(key) != given.get(key)
    )
    if differing:
        details = ", ".join(f"{key}: {recorded.get(key)!r} then, {given.get(key)!r} now" for key in differing)
        raise RunDirectoryError(f"--resume needs the interrupted run's arguments; these differ: {details}")


def started_config(config: TrainConfig, recorded: dict) -> TrainConfig:
    """`config` as the run had it when it started: a models:/ URI stands for the version resolved then."""
    if not _unresolved_uri(dataclasses.asdict(config)):
        return config
    path = recorded.get("pretrained_model")
    return dataclasses.replace(
        config,
        pretrained_model=Path(path) if path is not None else None,
        pretrained_model_version=recorded.get("pretrained_model_version"),
    )


def check_world_size(started_with: int, now: int) -> None:
    if started_with != now:
        raise RunDirectoryError(
            f"the run was started by {started_with} process(es) and is resumed by {now}: each "
            f"process trains its own shard, so resume with the same number (torchrun --nproc_per_node "
            f"{started_with} across all nodes, or no torchrun for 1)"
        )


def check_dataset(recorded: dict[str, str] | str, now: dict[str, str] | str, folder: Path) -> None:
    """Refuse to continue on other data: the files' hashes must be those the run started with.

    CIFAR-10 batches are fingerprinted by each file's sha256 (the changed files are named); an image folder by
    the hash of its manifest and conversion settings (reproduce names its changed files).
    """
    if isinstance(recorded, dict) and isinstance(now, dict):
        changed = sorted(name for name in recorded.keys() & now.keys() if recorded[name] != now[name])
        missing, added = sorted(recorded.keys() - now.keys()), sorted(now.keys() - recorded.keys())
        details = [f"{name} changed" for name in changed]
        details += [f"{name} is gone" for name in missing] + [f"{name} is new" for name in added]
    else:
        details = [] if recorded == now else ["its images, their classes or the conversion settings"]
    if details:
        raise RunDirectoryError(
            f"the dataset in {folder} changed since the interrupted run ({', '.join(details)}); --resume would "
            "mix two datasets into one model: restore the files, or start a new run"
        )


def comparable(environment: dict) -> dict:
    """An environment record as a resume compares it: the device by its type (see RESUME_MUST_MATCH)."""
    device = environment.get("device")
    return {**environment, "device": device.partition(":")[0] if isinstance(device, str) else device}


def check_environment(recorded: dict, now: dict, force: bool) -> tuple[list[str], list[str]]:
    """Compare the environment that wrote the checkpoint with this process's (each torchrun rank its own).

    Refuses a difference named in RESUME_MUST_MATCH unless `force`; returns (every difference, those that
    `force` let through).
    """
    changes = differences(comparable(recorded), comparable(now))
    blocking = [line for line in changes if line.split(":")[0] in RESUME_MUST_MATCH]
    if blocking and not force:
        raise RunDirectoryError(
            "--resume would continue this run with other results than it started with: "
            + "; ".join(blocking)
            + ". Resume where it ran, or add --force to continue anyway (recorded in run.json)"
        )
    return changes, blocking
