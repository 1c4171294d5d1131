"""Prove a run reproducible: re-run it from its run.json and compare the bytes.

    image_classifier_reproduce experiments/local_exp_test/run_1

The new run goes next to the recorded one as `<run>-repro-<n>`, with what the recorded run used: its
arguments, device type and thread count; its job size (a torchrun run is re-run under torchrun with as many
processes, or reproduce says why it cannot); and for a run of an older version, what that version did where
an option did not exist yet, not today's default. Exit code 0: model.pth is byte-identical (for a run that
another version wrote, whose file layout may differ: the same weights) and the metrics the run recorded are
equal (wall-clock seconds aside); 1: something differed, and what changed in the environment (versions,
platform, GPU, data, lock files, code) is listed to explain it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import image_classifier
from image_classifier.cli import (
    PASSWORD_ENV,
    ArgumentParser,
    add_password_option,
    add_verbose_option,
    configure_logging,
    exit_code_of,
    password_from,
)
from image_classifier.config import TrainConfig
from image_classifier.errors import DistributedRunError, ModelSpecError, UserError
from image_classifier.main import arguments_for
from image_classifier.manifest import dataset_file_differences, differences, start_environment
from image_classifier.model.spec import SPEC_KEY, spec_of_run
from image_classifier.run_dir import METRICS_FILE, MODEL_FILE, RUN_FILE, read_json, sha256_of
from image_classifier.secret import Secret
from image_classifier.tracking.uri import TRACKING_URI_ENV

logger = logging.getLogger(__name__)

TIMING_FIELDS = ("seconds", "images_per_second")  # wall-clock measurements, different in every run
PREPARED_KEYS = ("folder", "key", "reused")  # where an image folder's decoded copy is, and whether it existed

# Options that appeared after version 1.0.0 (`git log -p -- image_classifier/config.py`), with what runs did
# before each existed: a run.json without one of them ran that way, whatever today's default is.
BEFORE_THE_OPTION: dict[str, Callable[[dict], object]] = {
    "eval_batch_size": lambda arguments: arguments["batch_size"],  # evaluation took the training batch size
    "channels_last": lambda arguments: False,  # images and weights in the contiguous layout
    "amp": lambda arguments: False,  # float32 throughout
    "num_threads": lambda arguments: 0,  # any value: the count recorded under "determinism" replaces it
    "force": lambda arguments: False,
    "pretrained_model_uri": lambda arguments: None,  # the file was given as a path
    "pretrained_model_version": lambda arguments: None,
    # Before image folders and torchvision's architectures: CIFAR-10 batches (32 x 32) and the notebook's Net.
    "architecture": lambda arguments: "net",
    "image_size": lambda arguments: 32,
    "test_fraction": lambda arguments: 0.2,  # image folders only: never used by a CIFAR-10 run
    "skip_bad_images": lambda arguments: False,
    "cache_folder": lambda arguments: None,
    "augment": lambda arguments: False,
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="image_classifier_reproduce",
        description="Re-run a recorded run into <run>-repro-<n> and check that model.pth and the metrics match.",
    )
    parser.add_argument("run_dir", type=Path, help="a completed run: <experiments_folder>/<experiment>/<run>")
    parser.add_argument(
        "--dataset_folder",
        type=Path,
        default=None,
        help="where the dataset is now, if it moved (default: the folder recorded in run.json)",
    )
    add_password_option(parser)
    add_verbose_option(parser)
    return parser


def next_repro_name(run_dir: Path) -> str:
    number = 1
    while any(run_dir.with_name(f"{run_dir.name}-repro-{number}{suffix}").exists() for suffix in ("", ".incomplete")):
        number += 1
    return f"{run_dir.name}-repro-{number}"


def _without_timing(metrics: dict) -> dict:
    history = [{k: v for k, v in entry.items() if k not in TIMING_FIELDS} for entry in metrics.get("history", [])]
    return {**metrics, "history": history}


def _as_recorded(metrics: dict, recorded: dict) -> dict:
    """`metrics` cut down to the keys `recorded` has: an older version recorded fewer metrics."""
    history, recorded_history = metrics.get("history", []), recorded.get("history", [])
    entries = [{key: entry.get(key) for key in was} for entry, was in zip(history, recorded_history)]
    cut = {key: metrics.get(key) for key in recorded}
    if "history" in recorded:
        cut["history"] = entries + history[len(recorded_history) :]  # more epochs than recorded: a difference
    return cut


def unrecorded_metrics(recorded: dict, reproduced: dict) -> list[str]:
    """What the re-run measured that the recorded run did not (so it cannot be compared)."""
    in_history = {key for entry in reproduced.get("history", []) for key in entry}
    in_history -= {key for entry in recorded.get("history", []) for key in entry} | set(TIMING_FIELDS)
    return sorted(reproduced.keys() - recorded.keys()) + [f"history.{key}" for key in sorted(in_history)]


def metric_differences(recorded: dict, reproduced: dict) -> list[str]:
    recorded = _without_timing(recorded)
    reproduced = _as_recorded(_without_timing(reproduced), recorded)
    return [
        f"{key}: {recorded.get(key)!r} -> {reproduced.get(key)!r}"
        for key in sorted(recorded.keys() | reproduced.keys())
        if recorded.get(key) != reproduced.get(key)
    ]


def _spec_of(manifest: dict, metrics: dict | None) -> dict | None:
    """The model spec the run was built from (an earlier version's run: the notebook's Net at 32 x 32)."""
    try:
        return spec_of_run(manifest, metrics).to_dict()
    except ModelSpecError:
        return manifest.get(SPEC_KEY)


def environment_differences(
    recorded: dict, reproduced: dict, recorded_metrics: dict | None = None, reproduced_metrics: dict | None = None
) -> list[str]:
    """What besides the code path could explain different bytes, from the two run.json manifests (and the
    metrics, where an earlier version's run keeps its classes)."""
    sections = ("dataset", "determinism", "pretrained_model", "augmentation")
    before = {**start_environment(recorded), **{key: recorded.get(key) for key in sections}}
    after = {**start_environment(reproduced), **{key: reproduced.get(key) for key in sections}}
    before[SPEC_KEY], after[SPEC_KEY] = _spec_of(recorded, recorded_metrics), _spec_of(reproduced, reproduced_metrics)
    # Paths differ with the directory a run is started from, an image folder's prepared copy with the cache it
    # is in, and a re-run starts from the pretrained file itself, not from the registry name that found it:
    # the files' hashes are what count.
    ignore = (
        "dataset.folder",
        "pretrained_model.path",
        "pretrained_model.uri",
        "pretrained_model.version",
        *(f"dataset.prepared.{key}" for key in PREPARED_KEYS),
    )
    changes = differences(before, after, ignore=ignore)
    return changes + dataset_file_differences(recorded.get("dataset_manifest"), reproduced.get("dataset_manifest"))


def origin_directory(run_dir: Path, experiments_folder: Path) -> Path:
    """The directory a run was started from, where the relative paths in its run.json begin.

    The run lives in <origin>/<experiments_folder>/<experiment>/<run>, so it is found from the run's own
    place; reproducing then works from any directory, the experiment folder too.
    """
    experiments_root = run_dir.parent.parent
    parts = experiments_folder.parts
    if experiments_folder.is_absolute() or experiments_root.parts[len(experiments_root.parts) - len(parts) :] != parts:
        return Path.cwd()  # moved, or recorded with an absolute folder: paths are taken as they are
    return Path(*experiments_root.parts[: len(experiments_root.parts) - len(parts)])


def _check_pretrained_unchanged(path: Path | None, record: dict | None) -> None:
    if path is None or not record:
        return
    if not path.is_file():
        raise UserError(f"the run started from {path}, which is not there any more")
    now = sha256_of(path)
    if now != record["sha256"]:
        raise UserError(
            f"the run started from {path}, whose bytes changed since (sha256 {record['sha256']} then, {now} now)"
        )


def recorded_config(manifest: dict) -> TrainConfig:
    """The run's arguments as its version understood them: an option it did not have yet is given the
    behaviour it had (BEFORE_THE_OPTION), never today's default."""
    arguments = manifest.get("arguments")
    if not isinstance(arguments, dict):
        raise UserError("run.json records no arguments: the file is damaged")
    arguments = dict(arguments)
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    version = (manifest.get("versions") or {}).get("image_classifier", "unknown")
    newer = sorted(arguments.keys() - fields)
    if newer:
        raise UserError(
            f"the run was made by version {version} with options this version ({image_classifier.__version__}) "
            f"does not have: {', '.join(newer)}; reproduce it with that version"
        )
    unknown = sorted(fields - arguments.keys() - BEFORE_THE_OPTION.keys())
    if unknown:
        raise UserError(
            f"run.json records no {', '.join(unknown)}: without them, what the run did cannot be known "
            f"(version {version}, or a damaged file)"
        )
    for name in sorted(fields - arguments.keys()):
        arguments[name] = BEFORE_THE_OPTION[name](arguments)
    return TrainConfig.from_dict(arguments)


def torchrun_command(config: TrainConfig, world_size: int) -> list[str]:
    """One machine's torchrun job of `world_size` processes running the trainer with `config`."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world_size)]
    return [*launcher, "-m", "image_classifier.main", *arguments_for(config)]


def check_devices_for(config: TrainConfig, world_size: int, gpus_here: int) -> None:
    """A torchrun job on GPUs takes one GPU per process: refuse plainly where there are too few."""
    if world_size == 1 or not config.device.startswith("cuda") or gpus_here >= world_size:
        return
    arguments = shlex.join(["-m", "image_classifier.main", *arguments_for(config)])
    raise UserError(
        f"the run was trained by {world_size} torchrun processes, one GPU each, and this machine has {gpus_here} "
        f"GPU(s): the same job size is needed for the same bytes, so reproduce it where {world_size} GPUs are "
        f"(across several machines: torchrun --nnodes ... --nproc_per_node ... {arguments}, then compare "
        "model.pth's sha256 with the run's)"
    )


def _run(config: TrainConfig, world_size: int, password: Secret) -> Path:
    """Train `config` with `world_size` processes; return the new run's folder."""
    if world_size == 1:
        # Imported here so that --help and usage errors answer at once, without loading torch.
        from image_classifier.trainer import run_training

        return run_training(config, password)
    import torch

    check_devices_for(config, world_size, torch.cuda.device_count())
    command = torchrun_command(config, world_size)
    logger.info("re-running with %d processes: %s", world_size, shlex.join(command))
    # The password goes in the environment, never on a command line (other users can read those). A
    # re-run is not logged to MLflow, in one process or under torchrun. The trainer's stdout holds only
    # "run written to ..."; its log and errors go to stderr, shown as they come.
    environment = {key: value for key, value in os.environ.items() if key != TRACKING_URI_ENV}
    environment[PASSWORD_ENV] = password.reveal()
    finished = subprocess.run(command, env=environment, stdout=subprocess.DEVNULL, check=False)
    if finished.returncode != 0:
        raise DistributedRunError(
            f"the re-run under torchrun failed (exit code {finished.returncode}); its error is above"
        )
    return config.run_dir


def _load_weights(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a state_dict (damaged): it cannot hold the same weights
        return None


def same_weights(first: Path, second: Path) -> bool:
    """Whether two model files hold the same tensors bit for bit, whatever their file layout."""
    a, b = _load_weights(first), _load_weights(second)
    if not isinstance(a, dict) or not isinstance(b, dict) or list(a) != list(b):
        return False
    return all(
        a[name].dtype == b[name].dtype
        and a[name].shape == b[name].shape
        and a[name].contiguous().numpy().tobytes() == b[name].contiguous().numpy().tobytes()
        for name in a
    )


def reproduce(run_dir: Path, password: Secret, dataset_folder: Path | None = None) -> tuple[Path, bool, list[str]]:
    """Re-run `run_dir`; return the new run directory, whether it matched, and the report's lines."""
    run_dir = run_dir.resolve()  # "." or "run_1" from inside the experiment folder name the run too
    if not (run_dir / RUN_FILE).is_file():
        raise UserError(f"{run_dir} is not a completed run: it has no {RUN_FILE}")
    manifest = read_json(run_dir / RUN_FILE)
    if manifest.get("status") != "completed":
        raise UserError(f"{run_dir} did not complete (status {manifest.get('status')!r}); nothing to reproduce")
    recorded = recorded_config(manifest)
    origin = origin_directory(run_dir, recorded.experiments_folder)
    pretrained = origin / recorded.pretrained_model if recorded.pretrained_model is not None else None
    _check_pretrained_unchanged(pretrained, manifest.get("pretrained_model"))
    world_size = manifest.get("world_size", 1)  # runs from before torchrun support: one process
    device = manifest.get("device", recorded.device)
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise UserError(f"run.json's world_size {world_size!r} is not a number of processes: the file is damaged")
    if not isinstance(device, str):
        raise UserError(f"run.json's device {device!r} is not a device: the file is damaged")
    config = dataclasses.replace(
        recorded,
        experiments_folder=run_dir.parent.parent,
        experiment_name=run_dir.parent.name,
        run_name=next_repro_name(run_dir),
        dataset_folder=dataset_folder or origin / recorded.dataset_folder,
        pretrained_model=pretrained,
        cache_folder=origin / recorded.cache_folder if recorded.cache_folder is not None else None,
        # The type of device it ran on, not "auto"; any index, as a GPU of the same model gives the same bytes
        # (under torchrun each process takes its own).
        device=device.partition(":")[0],
        # CPU kernels split reductions by thread; the same count gives the same order of additions.
        num_threads=manifest["determinism"]["torch_num_threads"],
        resume=False,
    )
    new_dir = _run(config, world_size, password)

    recorded_hash, new_hash = sha256_of(run_dir / MODEL_FILE), sha256_of(new_dir / MODEL_FILE)
    recorded_metrics, new_metrics = read_json(run_dir / METRICS_FILE), read_json(new_dir / METRICS_FILE)
    metric_changes = metric_differences(recorded_metrics, new_metrics)
    new_manifest = read_json(new_dir / RUN_FILE)
    environment_changes = environment_differences(manifest, new_manifest, recorded_metrics, new_metrics)
    # Another version may lay the same weights out differently in the file (version 1.0.0 pickled the
    # state_dict's metadata too): there the weights are what must match, here every byte.
    version = (manifest.get("versions") or {}).get("image_classifier")
    other_version = version != new_manifest["versions"]["image_classifier"]
    if recorded_hash == new_hash:
        model_line, model_matched = "model.pth: identical", True
    elif other_version and same_weights(run_dir / MODEL_FILE, new_dir / MODEL_FILE):
        model_line, model_matched = f"model.pth: same weights (a file laid out by version {version})", True
    else:
        model_line, model_matched = "model.pth: DIFFERENT", False
    unrecorded = unrecorded_metrics(recorded_metrics, new_metrics)
    matched = model_matched and not metric_changes
    lines = [
        f"recorded   model.pth sha256 {recorded_hash}  {run_dir}",
        f"reproduced model.pth sha256 {new_hash}  {new_dir}",
        *([f"re-run by {world_size} torchrun processes, as recorded"] if world_size > 1 else []),
        model_line,
        "metrics: identical" if not metric_changes else "metrics: DIFFERENT",
        *(f"  {line}" for line in metric_changes),
        *([f"  not recorded by version {version}: {', '.join(unrecorded)}"] if unrecorded else []),
        "environment: unchanged" if not environment_changes else "environment: changed",
        *(f"  {line}" for line in environment_changes),
        "REPRODUCED" if matched else "NOT REPRODUCED",
    ]
    return new_dir, matched, lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    password = password_from(parser, args.db_pass)
    configure_logging(args.verbose)

    def check() -> int:
        _, matched, lines = reproduce(args.run_dir, password, args.dataset_folder)
        print("\n".join(lines))
        return 0 if matched else 1

    return exit_code_of(check)


if __name__ == "__main__":
    sys.exit(main())
