"""Prove a run reproducible: re-run it from its run.json and compare the bytes.

    image_classifier_reproduce experiments/local_exp_test/run_1

The new run goes next to the recorded one as `<run>-repro-<n>`. Exit code 0: model.pth is byte-identical
and the metrics are equal (wall-clock seconds aside); 1: something differed, and what changed in the
environment (versions, platform, data, lock files, code) is listed to explain it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from image_classifier.cli import (
    ArgumentParser,
    add_password_option,
    add_verbose_option,
    configure_logging,
    exit_code_of,
    password_from,
)
from image_classifier.config import TrainConfig
from image_classifier.data.database import Secret
from image_classifier.errors import ModelSpecError, UserError
from image_classifier.manifest import differences, start_environment
from image_classifier.model.spec import SPEC_KEY, spec_of_run
from image_classifier.run_dir import METRICS_FILE, MODEL_FILE, RUN_FILE, read_json, sha256_of

TIMING_FIELDS = ("seconds", "images_per_second")  # wall-clock measurements, different in every run


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


def metric_differences(recorded: dict, reproduced: dict) -> list[str]:
    recorded, reproduced = _without_timing(recorded), _without_timing(reproduced)
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
    sections = ("dataset", "determinism", "pretrained_model")
    before = {**start_environment(recorded), **{key: recorded.get(key) for key in sections}}
    after = {**start_environment(reproduced), **{key: reproduced.get(key) for key in sections}}
    before[SPEC_KEY], after[SPEC_KEY] = _spec_of(recorded, recorded_metrics), _spec_of(reproduced, reproduced_metrics)
    # Paths differ with the directory a run is started from; the files' hashes are what count.
    return differences(before, after, ignore=("dataset.folder", "pretrained_model.path"))


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


def reproduce(run_dir: Path, password: Secret, dataset_folder: Path | None = None) -> tuple[Path, bool, list[str]]:
    """Re-run `run_dir`; return the new run directory, whether it matched, and the report's lines."""
    run_dir = run_dir.resolve()  # "." or "run_1" from inside the experiment folder name the run too
    if not (run_dir / RUN_FILE).is_file():
        raise UserError(f"{run_dir} is not a completed run: it has no {RUN_FILE}")
    manifest = read_json(run_dir / RUN_FILE)
    if manifest.get("status") != "completed":
        raise UserError(f"{run_dir} did not complete (status {manifest.get('status')!r}); nothing to reproduce")
    recorded = TrainConfig.from_dict(manifest["arguments"])
    origin = origin_directory(run_dir, recorded.experiments_folder)
    pretrained = origin / recorded.pretrained_model if recorded.pretrained_model is not None else None
    _check_pretrained_unchanged(pretrained, manifest.get("pretrained_model"))
    config = dataclasses.replace(
        recorded,
        experiments_folder=run_dir.parent.parent,
        experiment_name=run_dir.parent.name,
        run_name=next_repro_name(run_dir),
        dataset_folder=dataset_folder or origin / recorded.dataset_folder,
        pretrained_model=pretrained,
        device=manifest.get("device", recorded.device),  # the device it ran on, not "auto"
        # CPU kernels split reductions by thread; the same count gives the same order of additions.
        num_threads=manifest["determinism"]["torch_num_threads"],
        resume=False,
    )
    # Imported here so that --help and usage errors answer at once, without loading torch.
    from image_classifier.trainer import run_training

    new_dir = run_training(config, password)

    recorded_hash, new_hash = sha256_of(run_dir / MODEL_FILE), sha256_of(new_dir / MODEL_FILE)
    recorded_metrics, new_metrics = read_json(run_dir / METRICS_FILE), read_json(new_dir / METRICS_FILE)
    metric_changes = metric_differences(recorded_metrics, new_metrics)
    environment_changes = environment_differences(
        manifest, read_json(new_dir / RUN_FILE), recorded_metrics, new_metrics
    )
    matched = recorded_hash == new_hash and not metric_changes
    lines = [
        f"recorded   model.pth sha256 {recorded_hash}  {run_dir}",
        f"reproduced model.pth sha256 {new_hash}  {new_dir}",
        "model.pth: identical" if recorded_hash == new_hash else "model.pth: DIFFERENT",
        "metrics: identical" if not metric_changes else "metrics: DIFFERENT",
        *(f"  {line}" for line in metric_changes),
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
