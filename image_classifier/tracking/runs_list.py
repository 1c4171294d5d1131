"""`image_classifier_runs list`: one row per run, finished or not, sorted by any column, with the
registered versions of its model."""

from __future__ import annotations

from collections.abc import Callable

from image_classifier.errors import UserError
from image_classifier.tracking.records import RunRecord, list_runs
from image_classifier.tracking.runs_configs import ListConfig
from image_classifier.tracking.runs_models import registered_versions, version_labels
from image_classifier.tracking.tables import SHA_PREFIX, cell, format_rows

LIST_COLUMNS = (
    "experiment",
    "run",
    "status",
    "started",
    "epochs",
    "architecture",
    "image_size",
    "batch_size",
    "learning_rate",
    "momentum",
    "seed",
    "test_accuracy",
    "duration_s",
    "model_sha256",
    "versions",
    "note",
)
# The table `list` prints by default: what tells runs apart at a glance, in 80-100 columns for the usual
# names. --wide (and CSV and JSON, which are for programs) give every column.
TABLE_COLUMNS = ("experiment", "run", "status", "started", "epochs", "test_accuracy", "versions", "note")


def run_row(record: RunRecord, versions: dict[str, list[str]]) -> dict:
    arguments = record.arguments
    spec = record.spec
    return {
        "experiment": record.experiment,
        "run": record.run,
        "status": record.status,
        "started": record.started_at,
        "epochs": len(record.history) if record.metrics else None,
        "architecture": spec.architecture if spec else None,
        "image_size": spec.image_size if spec else None,
        "batch_size": arguments.get("batch_size"),
        "learning_rate": arguments.get("learning_rate"),
        "momentum": arguments.get("momentum"),
        "seed": arguments.get("seed"),
        "test_accuracy": record.test_accuracy,
        "duration_s": record.duration_seconds,
        "model_sha256": record.model_sha256[:SHA_PREFIX] if record.model_sha256 else None,
        "versions": versions.get(record.name, []),
        "note": record.reason,
    }


def _sort_key(column: str) -> Callable[[dict], tuple]:
    # Missing values last whatever the direction; mixed types compare as text.
    def key(row: dict) -> tuple:
        value = row.get(column)
        if value is None or value == []:
            return (1, 0, "")
        return (0, value, "") if isinstance(value, (int, float)) else (0, 0, cell(value))

    return key


def list_command(config: ListConfig) -> int:
    if not config.experiments_folder.is_dir():
        raise UserError(f"no experiments folder {config.experiments_folder}")
    records = list_runs(config.experiments_folder, config.experiment)
    versions = version_labels(registered_versions(config.experiments_folder, config.tracking_uri))
    rows = [run_row(record, versions) for record in records]
    present = [row for row in rows if row.get(config.sort) not in (None, [])]
    missing = [row for row in rows if row.get(config.sort) in (None, [])]
    rows = sorted(present, key=_sort_key(config.sort), reverse=config.descending) + missing
    if config.format == "table":
        for row in rows:
            row["started"] = row["started"][:16].replace("T", " ") if row["started"] else None
    columns = TABLE_COLUMNS if config.format == "table" and not config.wide else LIST_COLUMNS
    print(format_rows(rows, columns, config.format))
    return 0
