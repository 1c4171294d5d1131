"""`image_classifier_runs show`: one run, as text (brief or `--full`, see `show_text.py`) or as one strict
JSON document holding its run.json, metrics.json, files and registered versions."""

from __future__ import annotations

from collections.abc import Mapping

from image_classifier.durable_files import to_strict_json
from image_classifier.tracking.records import RunRecord, find_run
from image_classifier.tracking.runs_configs import ShowConfig
from image_classifier.tracking.runs_models import registered_versions, version_labels
from image_classifier.tracking.show_text import mlflow_record_shown, show_brief, show_text


def _files_of(record: RunRecord) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(record.folder.iterdir()) if path.is_file()}


def show_document(record: RunRecord, files: dict[str, int], versions: list[str]) -> dict:
    """What `show --format json` prints: the run's files whole, credentials of earlier versions hidden."""
    return {
        "run": record.name,
        "status": record.status,
        "reason": record.reason,
        "folder": str(record.folder),
        "model_spec": record.spec.to_dict() if record.spec else None,
        "run_json": (
            {**record.manifest, "mlflow": mlflow_record_shown(record.manifest["mlflow"])}
            if isinstance(record.manifest.get("mlflow"), Mapping)
            else dict(record.manifest)
        ),
        "metrics": dict(record.metrics),
        "files": files,
        "versions": versions,
    }


def show_command(config: ShowConfig) -> int:
    record = find_run(config.experiments_folder, config.run)
    versions = version_labels(registered_versions(config.experiments_folder, config.tracking_uri)).get(record.name, [])
    files = _files_of(record)
    if config.format == "json":
        print(to_strict_json(show_document(record, files, versions)), end="")
    elif config.full:
        print(show_text(record, files, versions))
    else:
        print(show_brief(record, files, versions))
    return 0
