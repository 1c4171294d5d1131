"""A whole training run: load the data, build the model, train and evaluate epoch by epoch, record it all.

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
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from image_classifier.checkpoint import (
    CHECKPOINT_FORMAT,
    check_arguments,
    check_dataset,
    check_environment,
    check_format,
    check_world_size,
    started_config,
)
from image_classifier.clock import utc_timestamp
from image_classifier.config import TrainConfig
from image_classifier.data.batches import BatchAugmentation, iterate_batches, num_batches, prepare_split
from image_classifier.data.data import DataOptions, TrainTestData, get_train_test_data
from image_classifier.data.database import load_settings
from image_classifier.distributed import Runtime, runtime_for, weights_digest
from image_classifier.errors import DistributedRunError, ModelSpecError, TrainingInterrupted
from image_classifier.manifest import last_environment
from image_classifier.model.architectures import (
    build_model,
    check_architecture,
    check_deterministic_kernels,
    check_trains_on_one_image,
    load_pretrained,
)
from image_classifier.model.model import read_state_dict
from image_classifier.model.optimizer import MomentumSGD
from image_classifier.model.spec import SPEC_KEY, ModelSpec, new_spec
from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch
from image_classifier.model.validation import evaluate
from image_classifier.reproducibility import (
    capture_rng_state,
    configure_determinism,
    environment_facts,
    gpu_facts,
    restore_rng_state,
    seed_everything,
)
from image_classifier.run_dir import (
    CONFUSION_MATRIX_FILE,
    CURVES_FILE,
    METRICS_FILE,
    PLOT_FILE,
    RUN_FILE,
    RunDirectory,
    sha256_of,
)
from image_classifier.secret import Secret
from image_classifier.tracking.pretrained import resolve_pretrained_model
from image_classifier.tracking.run_logger import open_run_logger

logger = logging.getLogger(__name__)

# Below this batch size a new run trains on one CPU thread, from it on every core. On the README's quiet
# 2-core machine 2 threads trained 1.7-1.8x faster than 1 at batch 128 and 512, and 13 % slower at batch 4
# (too little work per kernel to share). While other work loads the machine, 2 threads are 3x to 30x
# slower at every batch size (each kernel waits for a descheduled partner): `--num_threads 1` there.
SINGLE_THREAD_BELOW_BATCH = 128
DATASET_MANIFEST_KEY = "dataset_manifest"  # run.json's list of an image folder's files


def torch_threads_for(config: TrainConfig) -> int:
    """The CPU thread count a new run uses: --num_threads, or one chosen from the batch size."""
    if config.num_threads:
        return config.num_threads
    return 1 if config.batch_size < SINGLE_THREAD_BELOW_BATCH else torch.get_num_threads()


def memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a request honoured between steps, so no checkpoint is torn.

    Not under torchrun (`enabled=False`): ranks stopping at different steps would wait for each other
    forever; there the signal ends the process and `--resume` continues from the last checkpoint.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.received: int | None = None
        self._previous: dict = {}
        self._enabled = enabled

    def __enter__(self) -> StopSignals:
        if not self._enabled:
            return self
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (e.g. some notebook front-ends): keep the default handlers
            self._previous = {}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signal_number: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.received = signal_number
        logger.warning("%s received: stopping after this step", signal.Signals(signal_number).name)


@dataclasses.dataclass
class RunState:
    """What changes as the run goes on; saved in every checkpoint."""

    progress: EpochProgress
    # What run.json says; kept in the checkpoint (but for an image folder's list of files, see
    # `TrainingSession.checkpoint`), so a resume never depends on run.json.
    manifest: dict
    order: torch.Tensor | None = None  # this epoch's data order, drawn when the epoch starts
    history: list[dict] = dataclasses.field(default_factory=list)


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
        checkpoint = self.checkpoint(state)  # a collective under torchrun: every rank gets here
        if self.runtime.is_main_process():
            self.run_dir.save_checkpoint(checkpoint)

    def checkpoint(self, state: RunState) -> dict:
        # Every rank's own loss sums: each rank resumes its part of the epoch's mean loss exactly.
        rank_losses = self.runtime.gather([state.progress.loss_sum, state.progress.window_loss_sum])
        rng = {**capture_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.augment is not None:  # each rank draws its own augmentation: every rank's state is kept
            rng["augment_by_rank"] = self.runtime.gather(self.augment.generator.get_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.result_fields(),
            "dataset_sha256": self.data.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": dataclasses.asdict(state.progress),
            # Without an image folder's list of files: about 150 bytes a file (150 MB for a million images),
            # pickled again at every checkpoint. The dataset's hash above holds a resume to the same files,
            # and `restore` puts the list back from them.
            "manifest": {key: value for key, value in state.manifest.items() if key != DATASET_MANIFEST_KEY},
            "order": state.order,
            "history": state.history,
            "rng": rng,
            "torch_num_threads": torch.get_num_threads(),
            "world_size": self.runtime.world_size,
            "rank_losses": rank_losses,
        }

    def restore(self, checkpoint: dict) -> RunState:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"])
        self.shuffle.set_state(checkpoint["rng"]["shuffle"])
        if self.augment is not None:
            self.augment.generator.set_state(checkpoint["rng"]["augment_by_rank"][self.runtime.rank])
        progress = EpochProgress(**checkpoint["progress"])
        if "rank_losses" in checkpoint:
            progress.loss_sum, progress.window_loss_sum = checkpoint["rank_losses"][self.runtime.rank]
        manifest = dict(checkpoint["manifest"])
        if self.data.manifest is not None:  # the same files: check_dataset compared their hash first
            manifest[DATASET_MANIFEST_KEY] = self.data.manifest
        return RunState(
            progress=progress,
            manifest=manifest,
            order=checkpoint["order"],
            history=list(checkpoint["history"]),
        )

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


def run_environment(device: torch.device) -> dict:
    """Where the run's bytes come from besides data and arguments: device, GPU, code, versions, platform."""
    return {"device": str(device), "gpu": gpu_facts(device), **environment_facts()}


def _pretrained_record(config: TrainConfig) -> dict | None:
    if config.pretrained_model is None:
        return None
    record = {"path": str(config.pretrained_model), "sha256": sha256_of(config.pretrained_model)}
    if config.pretrained_model_uri is not None:
        record.update(uri=config.pretrained_model_uri, version=config.pretrained_model_version)
    return record


def _new_manifest(
    config: TrainConfig,
    environment: dict,
    determinism: dict,
    data: TrainTestData,
    spec: ModelSpec,
    pretrained: dict | None,
    augment: BatchAugmentation | None,
) -> dict:
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


def _start(session: TrainingSession, pretrained: dict | None, environment: dict, determinism: dict) -> RunState:
    config = session.config
    if pretrained is not None:
        load_pretrained(session.model, session.spec, pretrained, config.pretrained_model)
        logger.info("loaded pretrained weights from %s", config.pretrained_model)
    manifest = _new_manifest(
        config, environment, determinism, session.data, session.spec, _pretrained_record(config), session.augment
    )
    manifest["world_size"] = session.runtime.world_size
    state = RunState(progress=EpochProgress(epoch=1), manifest=manifest)
    checkpoint = session.checkpoint(state)
    if session.runtime.is_main_process():
        session.run_dir.create(checkpoint, manifest)
    return state


def _resume(session: TrainingSession, checkpoint: dict, environment: dict) -> RunState:
    state = session.restore(checkpoint)
    changes, forced = check_environment(last_environment(state.manifest), environment, session.config.force)
    if changes:
        logger.warning("resuming in another environment: %s", "; ".join(changes))
    state.manifest["resumes"].append({"at": utc_timestamp(), "environment": environment, "forced": forced})
    logger.info("resuming at epoch %d, step %d", state.progress.epoch, state.progress.step)
    return state


def _save_figures(run_dir: RunDirectory, config: TrainConfig, metrics: dict, history: list[dict], classes) -> None:
    # matplotlib is imported here, after training, so that it never delays the first step (about 0.5 s).
    from image_classifier.visualization.plot import plot_confusion_matrix, plot_curves, plot_metrics

    name = f"{config.experiment_name}/{config.run_name}"
    accuracy = plot_metrics(
        metrics["test_accuracy"], metrics["class_accuracy"], f"{name}: test accuracy per class and in total"
    )
    run_dir.save_figure(PLOT_FILE, accuracy)
    run_dir.save_figure(CURVES_FILE, plot_curves({name: history}, f"{name}: loss and accuracy per epoch"))
    confusion = plot_confusion_matrix(metrics["confusion_matrix"], classes, f"{name}: confusion matrix (test set)")
    run_dir.save_figure(CONFUSION_MATRIX_FILE, confusion)


def _open_checkpoint(config: TrainConfig, run_dir: RunDirectory, runtime: Runtime) -> dict | None:
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


def _check_same_weights(session: TrainingSession) -> None:
    """Under torchrun: every rank must end with bit-identical weights (DDP keeps them so; this proves it)."""
    if not session.runtime.distributed:
        return
    digests = session.runtime.gather(weights_digest(session.model))
    if len(set(digests)) != 1:
        raise DistributedRunError(f"the processes ended with different weights (sha256 by rank: {digests})")
    # Not model.pth's sha256: that hashes the file (a zip archive), this the tensors' bytes.
    logger.info(
        "weights identical on all %d processes (sha256 of the weight tensors %s; model.pth's sha256, of the "
        "file, is in run.json)",
        len(digests),
        digests[0],
    )


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
            if not (runtime.distributed and _lost_a_peer(exc)):
                raise
            first_line = str(exc).strip().splitlines()[0]
            raise DistributedRunError(
                f"another process of this torchrun job failed ({first_line}); torchrun names it. The run stays "
                f"unfinished in {RunDirectory(config.run_dir).work_dir}: run the same torchrun command with --resume"
            ) from exc
        finally:
            torch.set_num_threads(threads)


def _lost_a_peer(exc: RuntimeError) -> bool:
    # A collective whose partner died raises DistError, or, from DDP's backward hooks, a plain RuntimeError
    # carrying the transport's message ("[.../gloo/transport/tcp/pair.cc:545] Read error ... Connection reset
    # by peer", or NCCL's).
    return isinstance(exc, torch.distributed.DistError) or any(word in str(exc) for word in ("gloo", "NCCL"))


def _train(config: TrainConfig, db_password: Secret, runtime: Runtime, tracking_uri: str | None) -> Path:
    check_architecture(config.architecture)  # an unknown name is refused before anything is touched
    # The run's lock lasts as long as the run: released when it finishes or fails, so this process may retry.
    with RunDirectory(config.run_dir) as run_dir:
        return _train_in(run_dir, config, db_password, runtime, tracking_uri)


def _train_in(
    run_dir: RunDirectory, config: TrainConfig, db_password: Secret, runtime: Runtime, tracking_uri: str | None
) -> Path:
    main_process = runtime.is_main_process()
    checkpoint = _open_checkpoint(config, run_dir, runtime)
    if checkpoint is not None:
        config = started_config(config, checkpoint["config"])
    # CPU kernels split their sums by thread: a resumed run finishes with the count it started with.
    torch.set_num_threads(checkpoint["torch_num_threads"] if checkpoint else torch_threads_for(config))
    device = runtime.device
    environment = run_environment(device)
    pretrained = None
    if checkpoint is None and config.pretrained_model is not None:
        pretrained = read_state_dict(config.pretrained_model, device)

    data = get_train_test_data(config.dataset_folder, load_settings(), db_password, data_options(config))
    _check_same_data(data, runtime)
    if checkpoint is not None:
        check_dataset(checkpoint["dataset_sha256"], data.fingerprint, config.dataset_folder)

    spec = new_spec(config.architecture, _image_size(data), data.classes)
    data = dataclasses.replace(
        data,
        train=prepare_split(data.train, device, memory_format(config), spec.mean, spec.std),
        test=prepare_split(data.test, device, memory_format(config), spec.mean, spec.std),
    )

    determinism = configure_determinism(config.deterministic, device)
    seed_everything(config.seed)
    model = build_model(spec)
    if len(runtime.shard(torch.arange(len(data.train)))) % config.batch_size == 1:
        check_trains_on_one_image(model, spec)
    model = model.to(device).to(memory_format=memory_format(config))
    if config.deterministic and device.type == "cuda":
        check_deterministic_kernels(model, spec, device)
    trained = DistributedDataParallel(model) if runtime.distributed else model
    optimizer = build_optimizer(model, config.learning_rate, config.momentum)
    shuffle = torch.Generator().manual_seed(config.seed)
    augment = BatchAugmentation(augment_generator(config.seed, runtime.rank)) if config.augment else None
    session = TrainingSession(config, data, runtime, model, trained, optimizer, shuffle, run_dir, spec, augment)
    if checkpoint is None:
        state = _start(session, pretrained, environment, determinism)
    else:
        state = _resume(session, checkpoint, environment)
    manifest = state.manifest
    manifest["status"] = "running"
    # One process talks to the tracking server: the one that writes the run.
    run_logger = open_run_logger(
        tracking_uri if main_process else None, config.experiment_name, config.run_name, manifest
    )
    _record_tracking(manifest, run_logger)
    session.on_epoch = run_logger.log_epoch
    if main_process:
        run_dir.write_json(RUN_FILE, manifest)

    logger.info(
        "training on %s for %d epoch(s)%s; run directory %s",
        device,
        config.num_epochs,
        f", {runtime.world_size} processes" if runtime.distributed else "",
        run_dir.work_dir,
    )
    with StopSignals(enabled=not runtime.distributed) as stop:
        try:
            metrics = session.train_remaining_epochs(state, stop)
            _check_same_weights(session)
        except BaseException as exc:
            if main_process:
                interrupted = isinstance(exc, (TrainingInterrupted, KeyboardInterrupt))
                manifest["status"] = "interrupted" if interrupted else "failed"
                run_logger.end("KILLED" if interrupted else "FAILED")
                _record_tracking(manifest, run_logger)
                run_dir.write_json(RUN_FILE, manifest)
            raise
    if not main_process:
        return run_dir.final_dir

    manifest["model_sha256"] = run_dir.save_model(model.state_dict())
    run_dir.write_json(METRICS_FILE, {**metrics, "history": state.history})
    _save_figures(run_dir, config, metrics, state.history, data.classes)
    run_logger.log_outputs(run_dir.work_dir, manifest["model_sha256"], exclude=(RUN_FILE,))
    manifest.update(status="completed", finished_at=utc_timestamp())
    _record_tracking(manifest, run_logger)
    run_dir.write_json(RUN_FILE, manifest)
    # After run.json is final, so these two calls cannot be counted in it (a failure still warns).
    run_logger.log_file(run_dir.work_dir / RUN_FILE)
    run_logger.end("FINISHED")
    return run_dir.finish()


def data_options(config: TrainConfig) -> DataOptions:
    return DataOptions(
        image_size=config.image_size,
        test_fraction=config.test_fraction,
        seed=config.seed,
        skip_bad_images=config.skip_bad_images,
        cache_folder=config.cache_folder,
    )


def augment_generator(seed: int, rank: int) -> torch.Generator:
    """--augment's own CPU generator: from the run's seed, distinct per torchrun rank (each augments its shard)."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(derived)


def _check_same_data(data: TrainTestData, runtime: Runtime) -> None:
    """Under torchrun: every rank must have read the same dataset (a file changed between them otherwise)."""
    if not runtime.distributed:
        return
    fingerprints = runtime.gather(data.fingerprint)
    if any(fingerprint != fingerprints[0] for fingerprint in fingerprints):
        raise DistributedRunError("the processes read different datasets: a file changed while the job started")


def _image_size(data: TrainTestData) -> int:
    """The side of the dataset's images: the size the model is built for and served at."""
    height, width = data.train.images.shape[-2:]
    if height != width:
        raise ModelSpecError(f"the dataset's images are {width} x {height} pixels; models take square images")
    return int(height)


def _record_tracking(manifest: dict, run_logger) -> None:
    """run.json's "mlflow": the server (without credentials), the MLflow run and the log calls lost."""
    record = run_logger.record()
    if record is not None:
        manifest["mlflow"] = record
