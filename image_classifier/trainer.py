"""One training run's lifecycle: open it (new or resumed), train and evaluate epoch by epoch, publish it.

The parts live in their own rooms: the checkpoint's format and the resume checks in `checkpoint.py`, the
data and model built from the config in `training_setup.py`, run.json's record in `run_record.py`, the
figures in `visualization/run_figures.py`, torchrun's checks in `distributed.py`.

The run is checkpointed into its unfinished run directory at its start, after the training part of every
epoch, after every evaluation, every `checkpoint_every` steps and when SIGINT or SIGTERM arrives. A
checkpoint carries everything the rest of the run depends on (weights, optimiser, position in the epoch,
the epoch's data order, every RNG state, the metrics so far), so `--resume` finishes with the same bytes.

Under torchrun every rank runs this same code on its shard of the data (see `distributed.py`); rank 0
alone touches the run directory. Checkpoints are taken at the same step on every rank (a collective), so
there they are only taken on schedule: a signal ends a torchrun job, which resumes from the last one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from image_classifier.checkpoint import RunState, capture, check_environment, open_checkpoint, restore, started_config
from image_classifier.clock import utc_timestamp
from image_classifier.config import TrainConfig
from image_classifier.data.batches import BatchAugmentation, iterate_batches, num_batches
from image_classifier.data.data import TrainTestData
from image_classifier.distributed import Runtime, check_same_weights, lost_a_peer, peer_failure, runtime_for
from image_classifier.errors import TrainingInterrupted
from image_classifier.manifest import last_environment
from image_classifier.model.architectures import check_architecture, load_pretrained
from image_classifier.model.model import read_state_dict
from image_classifier.model.optimizer import MomentumSGD
from image_classifier.model.spec import ModelSpec
from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch
from image_classifier.model.validation import evaluate
from image_classifier.reproducibility import configure_determinism, run_environment, seed_everything
from image_classifier.run_dir import METRICS_FILE, RUN_FILE, RunDirectory
from image_classifier.run_record import epoch_record, new_manifest, pretrained_record, record_resume, record_tracking
from image_classifier.secret import Secret
from image_classifier.stop_signals import StopSignals
from image_classifier.tracking.pretrained import resolve_pretrained_model
from image_classifier.tracking.run_logger import open_run_logger
from image_classifier.training_setup import (
    augment_generator,
    load_data,
    memory_format,
    model_on_device,
    torch_threads_for,
)
from image_classifier.visualization.run_figures import save_figures

logger = logging.getLogger(__name__)


def _ignore_epoch(entry: dict) -> None:
    pass


@dataclasses.dataclass
class TrainingSession:
    """The fixed parts of a run, with the operations that need several of them at once."""

    config: TrainConfig
    data: TrainTestData
    runtime: Runtime
    model: torch.nn.Module  # the model itself: what checkpoints hold and evaluation runs
    trained: torch.nn.Module  # what training steps call: the model, or its DistributedDataParallel wrapper
    optimizer: MomentumSGD
    shuffle: torch.Generator  # the data order's own generator
    run_dir: RunDirectory
    spec: ModelSpec  # what run.json records: how to rebuild the model and feed it
    augment: BatchAugmentation | None = None  # --augment, with this rank's own generator
    on_epoch: Callable[[dict], None] = _ignore_epoch  # told each epoch's history entry (tracking)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def save_checkpoint(self, state: RunState) -> None:
        checkpoint = capture(self, state)  # a collective under torchrun: every rank gets here
        if self.runtime.is_main_process():
            self.run_dir.save_checkpoint(checkpoint)

    def evaluate_test_set(self, stop: StopSignals) -> dict:
        config, data, runtime = self.config, self.data, self.runtime
        runtime.share_main_buffers(self.model)  # batch norm's statistics: every rank evaluates one model
        shard = runtime.test_shard(len(data.test))
        test_batches = iterate_batches(
            data.test,
            config.eval_batch_size,
            self.device,
            shard,
            mean=self.spec.mean,  # for a mapped image folder, normalised batch by batch
            std=self.spec.std,
            memory_format=memory_format(config),
        )
        steps = num_batches(len(data.test) if shard is None else len(shard), config.eval_batch_size)
        return evaluate(
            self.model,
            test_batches,
            data.classes,
            steps,
            after_step=lambda: self._stop_if_asked(stop),
            amp=config.amp,
            sum_counts=runtime.sum_over_ranks,
            progress_bar=runtime.is_main_process(),
        )

    def mean_loss(self, progress: EpochProgress) -> float:
        """The epoch's mean training loss over every rank's steps (each rank's own with one process)."""
        if not self.runtime.distributed:
            return progress.mean_loss
        totals = torch.tensor([progress.loss_sum, float(progress.step)], dtype=torch.float64)
        loss_sum, steps = self.runtime.sum_over_ranks(totals).tolist()
        return loss_sum / steps if steps else float("nan")

    def train_remaining_epochs(self, state: RunState, stop: StopSignals) -> dict:
        """Run the epochs left from `state`; return the last evaluation's metrics."""
        config, data, runtime = self.config, self.data, self.runtime
        train_steps = num_batches(len(runtime.shard(torch.arange(len(data.train)))), config.batch_size)
        metrics = None
        while state.progress.epoch <= config.num_epochs:
            progress = state.progress
            if state.order is None:
                state.order = torch.randperm(len(data.train), generator=self.shuffle)
            started, seconds_before = time.monotonic(), progress.seconds
            if progress.step < train_steps:

                def after_step(progress: EpochProgress) -> None:
                    progress.seconds = seconds_before + time.monotonic() - started
                    due = config.checkpoint_every and progress.step % config.checkpoint_every == 0
                    if due or stop.received is not None:
                        self.save_checkpoint(state)
                    self._stop_if_asked(stop)

                shard = runtime.shard(state.order)
                batches = iterate_batches(
                    data.train,
                    config.batch_size,
                    self.device,
                    shard,
                    progress.step,
                    mean=self.spec.mean,
                    std=self.spec.std,
                    augment=self.augment,  # pads with black as this normalisation maps it
                    memory_format=memory_format(config),
                )
                train_one_epoch(
                    self.trained,
                    batches,
                    self.optimizer,
                    progress,
                    train_steps,
                    after_step,
                    amp=config.amp,
                    progress_bar=runtime.is_main_process(),
                )
                self.save_checkpoint(state)  # a kill during evaluation resumes here, not at the epoch's start
            train_seconds = progress.seconds  # before evaluation: the throughput counts training only
            metrics = self.evaluate_test_set(stop)
            progress.seconds = seconds_before + time.monotonic() - started
            mean_loss = self.mean_loss(progress)
            entry = epoch_record(progress, mean_loss, metrics, train_seconds, len(data.train))
            state.history.append(entry)
            logger.info(
                "epoch %d/%d: train loss %.3f, test accuracy %.2f %%",
                progress.epoch,
                config.num_epochs,
                mean_loss,
                metrics["test_accuracy"],
            )
            if not math.isfinite(mean_loss) and not state.manifest["diverged"]:
                state.manifest["diverged"] = True
                logger.warning(
                    "training diverged: the mean training loss of epoch %d is %s; lower --learning_rate",
                    progress.epoch,
                    mean_loss,
                )
            state.progress, state.order = EpochProgress(epoch=progress.epoch + 1), None
            self.save_checkpoint(state)
            self.on_epoch(entry)  # after the checkpoint: a slow tracking server never delays it
        # No epoch to train (--num_epochs 0), or resumed after the last epoch's checkpoint: evaluate as is.
        return metrics if metrics is not None else self.evaluate_test_set(stop)

    def _stop_if_asked(self, stop: StopSignals) -> None:
        if stop.received is not None:
            raise TrainingInterrupted(stop.received, self.run_dir.work_dir)


def _start(session: TrainingSession, pretrained: dict | None, environment: dict, determinism: dict) -> RunState:
    config = session.config
    if pretrained is not None:
        load_pretrained(session.model, session.spec, pretrained, config.pretrained_model)
        logger.info("loaded pretrained weights from %s", config.pretrained_model)
    manifest = new_manifest(
        config, environment, determinism, session.data, session.spec, pretrained_record(config), session.augment
    )
    manifest["world_size"] = session.runtime.world_size
    state = RunState(progress=EpochProgress(epoch=1), manifest=manifest)
    checkpoint = capture(session, state)
    if session.runtime.is_main_process():
        session.run_dir.create(checkpoint, manifest)
    return state


def _resume(session: TrainingSession, checkpoint: dict, environment: dict) -> RunState:
    state = restore(session, checkpoint)
    changes, forced = check_environment(last_environment(state.manifest), environment, session.config.force)
    if changes:
        logger.warning("resuming in another environment: %s", "; ".join(changes))
    record_resume(state.manifest, environment, forced)
    logger.info("resuming at epoch %d, step %d", state.progress.epoch, state.progress.step)
    return state


def run_training(config: TrainConfig, db_password: Secret, tracking_uri: str | None = None) -> Path:
    """Train, validate and record one run; return the final run directory (under torchrun: on every rank).

    With `tracking_uri`, the run is also logged to that MLflow server; the server can never stop the run.
    """
    if not config.resume:  # a resumed run goes on from the version its checkpoint recorded (checkpoint.py)
        config = resolve_pretrained_model(config, tracking_uri)  # models:/... names a file, checked by sha256
    # A run sets its own thread count (see _train); the caller's comes back at the end, so that the next run
    # in this process (a notebook, reproduce) starts from torch's count for every core, not from this run's.
    threads = torch.get_num_threads()
    with runtime_for(config.device) as runtime:
        try:
            return _train(config, db_password, runtime, tracking_uri)
        except RuntimeError as exc:
            if not (runtime.distributed and lost_a_peer(exc)):
                raise
            raise peer_failure(exc, RunDirectory(config.run_dir).work_dir) from exc
        finally:
            torch.set_num_threads(threads)


def _train(config: TrainConfig, db_password: Secret, runtime: Runtime, tracking_uri: str | None) -> Path:
    check_architecture(config.architecture)  # an unknown name is refused before anything is touched
    # The run's lock lasts as long as the run: released when it finishes or fails, so this process may retry.
    with RunDirectory(config.run_dir) as run_dir:
        return _train_in(run_dir, config, db_password, runtime, tracking_uri)


def _open_session(
    run_dir: RunDirectory, config: TrainConfig, db_password: Secret, runtime: Runtime
) -> tuple[TrainingSession, RunState]:
    """Open the run: check and lock it, read the data, build the model, and start it or put its checkpoint back."""
    checkpoint = open_checkpoint(config, run_dir, runtime)
    if checkpoint is not None:
        config = started_config(config, checkpoint["config"])
    # CPU kernels split their sums by thread: a resumed run finishes with the count it started with.
    torch.set_num_threads(checkpoint["torch_num_threads"] if checkpoint else torch_threads_for(config))
    device = runtime.device
    environment = run_environment(device)
    pretrained = None
    if checkpoint is None and config.pretrained_model is not None:
        pretrained = read_state_dict(config.pretrained_model, device)

    data, spec = load_data(config, db_password, runtime, checkpoint)
    determinism = configure_determinism(config.deterministic, device)
    seed_everything(config.seed)
    model, trained = model_on_device(config, spec, runtime, len(data.train))
    optimizer = build_optimizer(model, config.learning_rate, config.momentum)
    shuffle = torch.Generator().manual_seed(config.seed)
    augment = BatchAugmentation(augment_generator(config.seed, runtime.rank)) if config.augment else None
    session = TrainingSession(config, data, runtime, model, trained, optimizer, shuffle, run_dir, spec, augment)
    if checkpoint is None:
        return session, _start(session, pretrained, environment, determinism)
    return session, _resume(session, checkpoint, environment)


def _train_in(
    run_dir: RunDirectory, config: TrainConfig, db_password: Secret, runtime: Runtime, tracking_uri: str | None
) -> Path:
    main_process = runtime.is_main_process()
    session, state = _open_session(run_dir, config, db_password, runtime)
    config, manifest = session.config, state.manifest
    manifest["status"] = "running"
    # One process talks to the tracking server: the one that writes the run.
    run_logger = open_run_logger(
        tracking_uri if main_process else None, config.experiment_name, config.run_name, manifest
    )
    record_tracking(manifest, run_logger)
    session.on_epoch = run_logger.log_epoch
    if main_process:
        run_dir.write_json(RUN_FILE, manifest)

    logger.info(
        "training on %s for %d epoch(s)%s; run directory %s",
        runtime.device,
        config.num_epochs,
        f", {runtime.world_size} processes" if runtime.distributed else "",
        run_dir.work_dir,
    )
    with StopSignals(enabled=not runtime.distributed) as stop:
        try:
            metrics = session.train_remaining_epochs(state, stop)
            check_same_weights(runtime, session.model)
        except BaseException as exc:
            if main_process:
                interrupted = isinstance(exc, (TrainingInterrupted, KeyboardInterrupt))
                manifest["status"] = "interrupted" if interrupted else "failed"
                run_logger.end("KILLED" if interrupted else "FAILED")
                record_tracking(manifest, run_logger)
                run_dir.write_json(RUN_FILE, manifest)
            raise
    if not main_process:
        return run_dir.final_dir

    manifest["model_sha256"] = run_dir.save_model(session.model.state_dict())
    run_dir.write_json(METRICS_FILE, {**metrics, "history": state.history})
    name = f"{config.experiment_name}/{config.run_name}"
    save_figures(run_dir, name, metrics, state.history, session.data.classes)
    run_logger.log_outputs(run_dir.work_dir, manifest["model_sha256"], exclude=(RUN_FILE,))
    manifest.update(status="completed", finished_at=utc_timestamp())
    record_tracking(manifest, run_logger)
    run_dir.write_json(RUN_FILE, manifest)
    # After run.json is final, so these two calls cannot be counted in it (a failure still warns).
    run_logger.log_file(run_dir.work_dir / RUN_FILE)
    run_logger.end("FINISHED")
    return run_dir.finish()
