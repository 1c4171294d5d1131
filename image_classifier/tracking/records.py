"""Read run folders tolerantly: every folder becomes a `RunRecord`, however old, unfinished or damaged.

A listing must never crash on one bad folder, so nothing here raises for a run's contents: a file that is
missing, half-written or not JSON makes the run `unreadable`, with the reason. Runs written by older
versions (no `status`, no per-epoch `test_loss`, ...) read with those values missing.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from image_classifier.config import check_name
from image_classifier.errors import ModelSpecError, RunRecordError, UserError
from image_classifier.locking import is_locked
from image_classifier.model.spec import SPEC_KEY, ModelSpec, spec_of_run
from image_classifier.run_dir import INCOMPLETE_SUFFIX, METRICS_FILE, RUN_FILE, STAGING_MARKER

COMPLETED, INTERRUPTED, FAILED, RUNNING, UNREADABLE = "completed", "interrupted", "failed", "running", "unreadable"


@dataclass(frozen=True)
class RunRecord:
    experiment: str
    run: str
    folder: Path
    status: str
    reason: str | None = None  # why a run is unreadable, or what is odd about it
    manifest: Mapping = field(default_factory=dict)  # run.json as read; {} when it could not be read
    metrics: Mapping = field(default_factory=dict)  # metrics.json as read; {} for unfinished runs

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.run}"

    @property
    def arguments(self) -> Mapping:
        return _mapping(self.manifest.get("arguments"))

    @property
    def history(self) -> list[Mapping]:
        history = self.metrics.get("history")
        return [entry for entry in history if isinstance(entry, Mapping)] if isinstance(history, list) else []

    @property
    def test_accuracy(self) -> float | None:
        return _number(self.metrics.get("test_accuracy"))

    @property
    def class_accuracy(self) -> Mapping:
        return _mapping(self.metrics.get("class_accuracy"))

    @property
    def model_sha256(self) -> str | None:
        value = self.manifest.get("model_sha256")
        return value if isinstance(value, str) else None

    @property
    def spec(self) -> ModelSpec | None:
        """The run's model spec (an earlier version's run: the notebook's Net at 32 x 32); None if unreadable."""
        try:
            return spec_of_run(self.manifest, self.metrics)
        except ModelSpecError:
            return None

    @property
    def spec_recorded(self) -> bool:
        """Whether run.json records the spec itself (runs of earlier versions did not)."""
        return self.manifest.get(SPEC_KEY) is not None

    @property
    def started_at(self) -> str | None:
        value = self.manifest.get("started_at")
        return value if isinstance(value, str) else None

    @property
    def duration_seconds(self) -> float | None:
        """Seconds spent in the trained epochs, training and evaluation (pauses between a stop and its resume
        do not count): 0 for a run of 0 epochs. For a run of an earlier version, whose metrics.json records no
        per-epoch seconds, the wall-clock time from start to finish."""
        seconds = [_number(entry.get("seconds")) for entry in self.history]
        if isinstance(self.metrics.get("history"), list) and all(value is not None for value in seconds):
            return round(sum(seconds), 3)
        started, finished = _timestamp(self.started_at), _timestamp(self.manifest.get("finished_at"))
        return (finished - started).total_seconds() if started and finished else None


def _mapping(value) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _number(value) -> float | None:
    """A finite number as float; None for anything else (NaN and infinities, which older versions wrote into
    metrics.json for a diverged run, included)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _timestamp(text) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _read_json_object(path: Path) -> tuple[dict | None, str | None]:
    """The JSON object in `path`, or None and the reason it cannot be had."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path.name}: {getattr(exc, 'strerror', None) or exc}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno}); half-written or damaged"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, None


def read_run(folder: Path) -> RunRecord:
    """The record of one run folder, `<experiment>/<run>` or `<experiment>/<run>.incomplete`; never raises."""
    unfinished = folder.name.endswith(INCOMPLETE_SUFFIX)
    run = folder.name[: -len(INCOMPLETE_SUFFIX)] if unfinished else folder.name
    base = {"experiment": folder.parent.name, "run": run, "folder": folder}
    manifest, problem = _read_json_object(folder / RUN_FILE)
    if unfinished:
        return _unfinished_record(base, manifest, problem)
    if manifest is None:
        return RunRecord(**base, status=UNREADABLE, reason=problem)
    metrics, problem = _read_json_object(folder / METRICS_FILE)
    if metrics is None:
        return RunRecord(**base, status=UNREADABLE, reason=problem, manifest=manifest)
    reason = None
    if "status" not in manifest:
        reason = "written by an older version (run.json has no status)"
    elif manifest["status"] != COMPLETED:
        reason = f"run.json says {manifest['status']!r}, but the run was published as finished"
    return RunRecord(**base, status=COMPLETED, reason=reason, manifest=manifest, metrics=metrics)


def _unfinished_record(base: dict, manifest: dict | None, problem: str | None) -> RunRecord:
    if manifest is None:
        # The trainer creates the folder a moment before it first writes run.json.
        reason = f"unfinished, {problem}: stopped as it started, or starting now"
        return RunRecord(**base, status=INTERRUPTED if problem == f"no {RUN_FILE}" else UNREADABLE, reason=reason)
    # The process that runs (or resumes) a run holds a lock on its folder until it ends, however it ends.
    try:
        locked = is_locked(base["folder"])
    except FileNotFoundError:  # renamed since run.json was read: published (or deleted) this instant
        reason = "unfinished: a process was finishing it just now"
        return RunRecord(**base, status=RUNNING, reason=reason, manifest=manifest)
    if locked:
        return RunRecord(**base, status=RUNNING, reason="unfinished: a process is running it now", manifest=manifest)
    status = manifest.get("status")
    reason = {
        RUNNING: "unfinished: killed without a chance to say so; resume it with --resume",
        INTERRUPTED: "unfinished: stopped; resume it with --resume",
        FAILED: "unfinished: failed; see its log, then --resume or delete the folder",
    }.get(status, f"unfinished, run.json says {status!r}")
    return RunRecord(**base, status=FAILED if status == FAILED else INTERRUPTED, reason=reason, manifest=manifest)


def _subfolders(folder: Path) -> list[Path]:
    try:
        # Hidden folders are not runs (.mlflow-models holds downloads); a staging folder is a run being created.
        return sorted(
            p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and STAGING_MARKER not in p.name
        )
    except OSError:
        return []


def list_runs(experiments_folder: Path, experiment: str | None = None) -> list[RunRecord]:
    """Every run folder under `experiments_folder` (or of one experiment), finished or not."""
    experiments = [experiments_folder / experiment] if experiment else _subfolders(experiments_folder)
    return [read_run(run_folder) for folder in experiments for run_folder in _subfolders(folder)]


def parse_run_reference(reference: str) -> tuple[str, str]:
    """`EXPERIMENT/RUN` as two checked names."""
    experiment, slash, run = reference.partition("/")
    if not slash:
        raise RunRecordError(f"{reference!r} is not EXPERIMENT/RUN")
    try:
        check_name("experiment name", experiment)
        check_name("run name", run)
    except UserError as exc:
        raise RunRecordError(str(exc)) from None
    return experiment, run


def find_run(experiments_folder: Path, reference: str) -> RunRecord:
    """The run `EXPERIMENT/RUN`, finished or not; an error naming what exists when there is no such run."""
    experiment, run = parse_run_reference(reference)
    for folder in (experiments_folder / experiment / run, experiments_folder / experiment / (run + INCOMPLETE_SUFFIX)):
        if folder.is_dir():
            return read_run(folder)
    known = [record.run for record in list_runs(experiments_folder, experiment)]
    hint = f"; runs of {experiment}: {', '.join(known)}" if known else f"; {experiment} has no runs there"
    raise RunRecordError(f"no run {reference} in {experiments_folder}{hint}")
