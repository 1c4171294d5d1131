"""The text of `image_classifier_runs show`: one run as titled sections (its status and times, model,
arguments, environment, metrics per epoch, per-class accuracy, files), in full (`--full`) or brief, the
form that fits a terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from image_classifier.flatten import leaves
from image_classifier.manifest import ENVIRONMENT_KEYS
from image_classifier.tracking.records import RunRecord
from image_classifier.tracking.tables import SHA_PREFIX, cell, format_table, indent, printable
from image_classifier.tracking.uri import redacted, without_credentials

WIDTH = 100  # the terminal width the brief `show` is laid out for (the default `list` fits it too)
SHOWN_EPOCHS = 10  # the last epochs `show` lists without --full
HISTORY_COLUMNS = ("epoch", "train_loss", "test_loss", "test_accuracy", "images_per_second", "seconds")
SHOWN_ENVIRONMENT = (*ENVIRONMENT_KEYS, "determinism", "pretrained_model")


def mlflow_record_shown(record: Mapping) -> dict:
    """run.json's "mlflow" section as shown. Earlier versions of the package kept a tracking URI whose password
    held '/', '?' or '#' whole, in `tracking_uri` and in the `error` quoting it: hidden here."""
    uri = record.get("tracking_uri")
    if not isinstance(uri, str):
        return dict(record)
    return {
        key: without_credentials(value, uri) if isinstance(value, str) and key != "tracking_uri" else value
        for key, value in {**record, "tracking_uri": redacted(uri)}.items()
    }


def show_text(record: RunRecord, files: dict[str, int], versions: list[str]) -> str:
    """`show --full`: every value whole, every epoch, the hashes of every file."""
    manifest = record.manifest
    lines = _header(record, versions, brief=False)
    lines += ["", *_section("model", model_rows(record))]
    lines += ["", *_section("arguments", list(record.arguments.items()))]
    environment = {key: manifest[key] for key in SHOWN_ENVIRONMENT if manifest.get(key)}
    lines += ["", *_section("environment", _environment_pairs(environment, manifest))]
    if record.history:
        lines += ["", "metrics per epoch", indent(format_table(record.history, HISTORY_COLUMNS))]
    if record.class_accuracy:
        lines += ["", *_section("test accuracy per class", list(record.class_accuracy.items()))]
    lines += ["", *_section("files (bytes)", list(files.items()))]
    return "\n".join(lines)


def show_brief(record: RunRecord, files: dict[str, int], versions: list[str]) -> str:
    """`show` without --full: what a person reads, in about 40 lines of at most WIDTH columns for a run
    of the sample dataset. Hashes are shortened and those of files (lock files, dataset files) left out:
    --full and --format json have them all."""
    manifest = record.manifest
    lines = _header(record, versions, brief=True)
    lines += ["", *_section("model", model_rows(record))]
    lines += ["", "arguments", *_packed(list(record.arguments.items()))]
    environment = {key: manifest[key] for key in SHOWN_ENVIRONMENT if manifest.get(key) and key != "lock_files"}
    pairs = _environment_pairs(environment, manifest)
    pairs = [(key, _shortened(value)) for key, value in pairs if not any("sha256" in part for part in key.split("."))]
    lines += ["", "environment (--full: every hash)", *_packed(pairs)]
    if record.history:
        shown = record.history[-SHOWN_EPOCHS:]
        title = "metrics per epoch" + (
            f" (the last {len(shown)} of {len(record.history)}; --full: all)"
            if len(shown) < len(record.history)
            else ""
        )
        lines += ["", title, indent(format_table(shown, HISTORY_COLUMNS))]
    if record.class_accuracy:
        lines += ["", "test accuracy per class", *_packed(list(record.class_accuracy.items()))]
    lines += ["", "files (bytes)", *_packed(list(files.items()))]
    return "\n".join(lines)


def _header(record: RunRecord, versions: list[str], brief: bool) -> list[str]:
    """The first section of both forms: status, times, the model's hash (shortened in the brief form),
    versions, accuracy and the MLflow run. The brief form leaves out a run that was never resumed."""
    manifest = record.manifest
    resumed = _resume_times(manifest)
    header = [
        ("status", record.status + (f" ({record.reason})" if record.reason else "")),
        ("folder", record.folder),
        ("started", record.started_at),
        *([] if brief and not resumed else [("resumed", resumed or None)]),
        ("finished", manifest.get("finished_at")),
        ("duration_s", record.duration_seconds),
        ("model_sha256", _shortened(record.model_sha256) if brief else record.model_sha256),
        ("versions", versions),
        ("test_accuracy", record.test_accuracy),
    ]
    if isinstance(manifest.get("mlflow"), dict):
        header.extend(("mlflow." + key, value) for key, value in mlflow_record_shown(manifest["mlflow"]).items())
    return _section(f"run {record.name}", header)


def _environment_pairs(environment: dict, manifest: Mapping) -> list[tuple[str, object]]:
    dataset = manifest.get("dataset") if isinstance(manifest.get("dataset"), dict) else {}
    return [*leaves(environment), *leaves({"dataset": dataset})]


def model_rows(record: RunRecord) -> list[tuple[str, object]]:
    """The run's model spec as (name, value) rows, and a note when an earlier version's run implies it."""
    spec = record.spec
    if spec is None:
        return [("spec", "unreadable: run.json names neither a valid model spec nor the classes")]
    rows = [
        ("architecture", spec.architecture),
        ("image_size", f"{spec.image_size} x {spec.image_size}"),
        ("mean", list(spec.mean)),
        ("std", list(spec.std)),
        ("classes", f"{spec.num_classes}: {', '.join(spec.classes)}"),
    ]
    if not record.spec_recorded:
        rows.append(("note", "run.json of an earlier version, without a spec: the notebook's Net at 32 x 32"))
    return rows


def _resume_times(manifest: Mapping) -> list[str]:
    resumes = manifest.get("resumes")
    if isinstance(resumes, list):  # one entry per resume, with its environment
        return [str(entry.get("at")) for entry in resumes if isinstance(entry, Mapping)]
    return list(manifest.get("resumed_at") or [])  # runs of earlier versions kept the times only


def _section(title: str, pairs: Sequence[tuple[str, object]]) -> list[str]:
    """A title and its `key  value` lines, the values aligned."""
    keys = [printable(str(key)) for key, _ in pairs]
    width = max(map(len, keys), default=0)
    return [title, *(f"  {key.ljust(width)}  {cell(value)}" for key, (_, value) in zip(keys, pairs))]


def _shortened(value):
    """A hash (a 40-digit commit, a 64-digit sha256) as its first SHA_PREFIX digits."""
    if isinstance(value, str) and len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value):
        return value[:SHA_PREFIX]
    return value


def _packed(pairs: Sequence[tuple[str, object]]) -> list[str]:
    """`key=value` items, as many to a line as fit in WIDTH columns."""
    lines, line = [], ""
    for key, value in pairs:
        item = f"{printable(str(key))}={cell(value)}"
        if line and 2 + len(line) + 2 + len(item) > WIDTH:
            lines.append("  " + line)
            line = item
        else:
            line = f"{line}  {item}" if line else item
    return lines + (["  " + line] if line else [])
