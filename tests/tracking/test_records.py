"""What a run record reports, from run folders written by hand (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_classifier.tracking.records import read_run

STARTED, FINISHED = "2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00"  # 300 s apart


def _run_folder(tmp_path: Path, history) -> Path:
    folder = tmp_path / "e" / "r"
    folder.mkdir(parents=True)
    manifest = {"status": "completed", "started_at": STARTED, "finished_at": FINISHED, "classes": ["a", "b"]}
    (folder / "run.json").write_text(json.dumps(manifest))
    metrics = {"test_accuracy": 50.0, "class_accuracy": {"a": 50.0, "b": 50.0}}
    if history is not None:
        metrics["history"] = history
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.mark.parametrize(
    "history, duration",
    [
        ([{"epoch": 1, "seconds": 1.25}, {"epoch": 2, "seconds": 2.5}], 3.75),  # the seconds of the epochs
        ([], 0.0),  # --num_epochs 0: no time in epochs, whatever the wall clock says (it said 300 before)
        ([{"epoch": 1, "train_loss": 1.0}], 300.0),  # an earlier version's run, without per-epoch seconds
        (None, 300.0),  # an earlier version's run, without any history
    ],
)
def test_duration_is_the_time_in_epochs_and_the_wall_clock_only_for_earlier_versions(tmp_path, history, duration):
    assert read_run(_run_folder(tmp_path, history)).duration_seconds == duration


def test_an_unfinished_run_published_while_it_is_read_is_a_record_not_a_traceback(tmp_path, monkeypatch):
    # `runs list` reads run.json of `r.incomplete`, and the trainer renames the folder to `r` (publishing the
    # run) before the lock is asked about: read_run "never raises", so this is a record too.
    from image_classifier.tracking import records

    folder = tmp_path / "e" / "r.incomplete"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "running"}))
    read_json_object = records._read_json_object

    def read_then_published(path):
        found = read_json_object(path)
        folder.rename(folder.with_name("r"))
        return found

    monkeypatch.setattr(records, "_read_json_object", read_then_published)
    record = read_run(folder)
    assert record.status == "running" and "just now" in record.reason
