"""List, inspect and compare recorded runs, and name their models: `image_classifier_runs`.

Copy-paste examples:

    image_classifier_runs list                                   # every run under experiments/
    image_classifier_runs list --experiment local_exp --sort test_accuracy --descending --format csv
    image_classifier_runs list --wide                            # every column: hyperparameters, hashes...
    image_classifier_runs show local_exp/run_1                   # add --full for every hash
    image_classifier_runs compare local_exp/run_1 local_exp/run_2 --plot compare.png
    image_classifier_runs register local_exp/run_1 --name cifar-net --alias production
    image_classifier_runs alias cifar-net production 2
    image_classifier_runs models cifar-net

With --mlflow_tracking_uri (or $MLFLOW_TRACKING_URI), register, alias and models use MLflow's model
registry instead of experiments/registry.json. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from image_classifier import __version__
from image_classifier.cli import ArgumentParser, add_verbose_option, configure_logging, exit_code_of, positive_int
from image_classifier.durable_files import to_strict_json
from image_classifier.errors import UserError
from image_classifier.manifest import ENVIRONMENT_KEYS
from image_classifier.tracking.records import RunRecord, find_run, list_runs
from image_classifier.tracking.registry import ModelVersion, open_registry
from image_classifier.tracking.uri import TRACKING_URI_ENV, redacted, tracking_uri_from, without_credentials

logger = logging.getLogger(__name__)

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
MODEL_COLUMNS = ("name", "version", "aliases", "source_run", "test_accuracy", "registered_at", "sha256")
SHA_PREFIX = 12  # enough to tell models apart by eye; the full hash is in `show --full` and run.json
WIDTH = 100  # the terminal width the default `list` and `show` are laid out for
SHOWN_EPOCHS = 10  # the last epochs `show` lists without --full
NAME_ARGUMENTS = ("experiment_name", "run_name")  # in every compare's header already


# --- one frozen configuration per subcommand ---


@dataclass(frozen=True)
class ListConfig:
    experiments_folder: Path
    tracking_uri: str | None = field(repr=False)  # it may carry credentials
    experiment: str | None
    sort: str
    descending: bool
    format: str
    wide: bool = False


@dataclass(frozen=True)
class ShowConfig:
    experiments_folder: Path
    tracking_uri: str | None = field(repr=False)  # it may carry credentials
    run: str
    format: str
    full: bool = False


@dataclass(frozen=True)
class CompareConfig:
    experiments_folder: Path
    runs: tuple[str, ...]
    plot: Path | None
    format: str = "text"


@dataclass(frozen=True)
class RegisterConfig:
    experiments_folder: Path
    tracking_uri: str | None = field(repr=False)  # it may carry credentials
    run: str
    name: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class AliasConfig:
    experiments_folder: Path
    tracking_uri: str | None = field(repr=False)  # it may carry credentials
    name: str
    alias: str
    version: int


@dataclass(frozen=True)
class ModelsConfig:
    experiments_folder: Path
    tracking_uri: str | None = field(repr=False)  # it may carry credentials
    name: str | None
    format: str


# --- formatting ---


def printable(text: str) -> str:
    """`text` with control characters shown as escapes (\\x1b): text from a run's files must not move the
    cursor, clear the screen or break a table's lines on the terminal that prints it."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # Four significant digits tell losses and accuracies apart; throughputs need no decimals.
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return printable(", ".join(map(str, value))) or "-"
    return printable(str(value))


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
    lines = [columns, *cells]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in lines)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): text from a run's
# files (a hand-edited run.json, a registry entry) must never become one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")  # OWASP ASVS 1.2.10 names the null too


def csv_cell(value):
    """`value` for a CSV cell: lists joined with "; ", text that a spreadsheet would run as a formula quoted
    with a leading apostrophe (what spreadsheets show as plain text); numbers as they are."""
    if isinstance(value, (list, tuple)):
        value = "; ".join(map(str, value))
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def format_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    stream = io.StringIO()
    # RFC 4180's line end: the writer then quotes a field holding a lone CR too, which readers and
    # spreadsheets would otherwise take for the end of a row.
    writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: csv_cell(value) for key, value in row.items()})
    return stream.getvalue().removesuffix("\r\n")


def format_rows(rows: Sequence[dict], columns: Sequence[str], output_format: str) -> str:
    if output_format == "json":
        return to_strict_json([{column: row.get(column) for column in columns} for row in rows]).rstrip("\n")
    if output_format == "csv":
        return format_csv(rows, columns)
    return format_table(rows, columns)


# --- list ---


def version_labels(versions: Sequence[ModelVersion]) -> dict[str, list[str]]:
    """`NAME/VERSION` (with `@ALIAS`es) of every registered version, by source run."""
    labels: dict[str, list[str]] = {}
    for version in versions:
        label = f"{version.name}/{version.version}" + "".join(f"@{alias}" for alias in version.aliases)
        labels.setdefault(version.source_run, []).append(label)
    return labels


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
        return (0, value, "") if isinstance(value, (int, float)) else (0, 0, _cell(value))

    return key


def registered_versions(experiments_folder: Path, tracking_uri: str | None) -> list[ModelVersion]:
    """The registry's versions for `list` and `show`; a registry that cannot be opened or read (damaged,
    a server that is down, MLflow not installed) does not stop them: it is one warning."""
    try:
        return open_registry(experiments_folder, tracking_uri).versions()
    except UserError as exc:
        logger.warning("registered versions not shown: %s", exc)
        return []


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


# --- show ---


def _files_of(record: RunRecord) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(record.folder.iterdir()) if path.is_file()}


def _section(title: str, pairs: Sequence[tuple[str, object]]) -> list[str]:
    keys = [printable(str(key)) for key, _ in pairs]
    width = max(map(len, keys), default=0)
    return [title, *(f"  {key.ljust(width)}  {_cell(value)}" for key, (_, value) in zip(keys, pairs))]


def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(item, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), value)]


HISTORY_COLUMNS = ("epoch", "train_loss", "test_loss", "test_accuracy", "images_per_second", "seconds")
SHOWN_ENVIRONMENT = (*ENVIRONMENT_KEYS, "determinism", "pretrained_model")


def _resume_times(manifest: Mapping) -> list[str]:
    resumes = manifest.get("resumes")
    if isinstance(resumes, list):  # one entry per resume, with its environment
        return [str(entry.get("at")) for entry in resumes if isinstance(entry, Mapping)]
    return list(manifest.get("resumed_at") or [])  # runs of earlier versions kept the times only


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
    manifest = record.manifest
    header = [
        ("status", record.status + (f" ({record.reason})" if record.reason else "")),
        ("folder", record.folder),
        ("started", record.started_at),
        ("resumed", _resume_times(manifest) or None),
        ("finished", manifest.get("finished_at")),
        ("duration_s", record.duration_seconds),
        ("model_sha256", record.model_sha256),
        ("versions", versions),
        ("test_accuracy", record.test_accuracy),
    ]
    if isinstance(manifest.get("mlflow"), dict):
        header.extend(("mlflow." + key, value) for key, value in mlflow_record_shown(manifest["mlflow"]).items())
    lines = _section(f"run {record.name}", header)
    lines += ["", *_section("model", model_rows(record))]
    lines += ["", *_section("arguments", list(record.arguments.items()))]
    environment = {key: manifest[key] for key in SHOWN_ENVIRONMENT if manifest.get(key)}
    dataset = manifest.get("dataset") if isinstance(manifest.get("dataset"), dict) else {}
    lines += ["", *_section("environment", [*_flatten(environment), *_flatten({"dataset": dataset})])]
    if record.history:
        lines += ["", "metrics per epoch", _indent(format_table(record.history, HISTORY_COLUMNS))]
    if record.class_accuracy:
        lines += ["", *_section("test accuracy per class", list(record.class_accuracy.items()))]
    lines += ["", *_section("files (bytes)", list(files.items()))]
    return "\n".join(lines)


def _shortened(value):
    """A hash (a 40-digit commit, a 64-digit sha256) as its first SHA_PREFIX digits."""
    if isinstance(value, str) and len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value):
        return value[:SHA_PREFIX]
    return value


def _packed(pairs: Sequence[tuple[str, object]]) -> list[str]:
    """`key=value` items, as many to a line as fit in WIDTH columns."""
    lines, line = [], ""
    for key, value in pairs:
        item = f"{printable(str(key))}={_cell(value)}"
        if line and 2 + len(line) + 2 + len(item) > WIDTH:
            lines.append("  " + line)
            line = item
        else:
            line = f"{line}  {item}" if line else item
    return lines + (["  " + line] if line else [])


def show_brief(record: RunRecord, files: dict[str, int], versions: list[str]) -> str:
    """`show` without --full: what a person reads, in about 40 lines of at most WIDTH columns for a run
    of the sample dataset. Hashes are shortened and those of files (lock files, dataset files) left out:
    --full and --format json have them all."""
    manifest = record.manifest
    header = [
        ("status", record.status + (f" ({record.reason})" if record.reason else "")),
        ("folder", record.folder),
        ("started", record.started_at),
        *([("resumed", _resume_times(manifest))] if _resume_times(manifest) else []),
        ("finished", manifest.get("finished_at")),
        ("duration_s", record.duration_seconds),
        ("model_sha256", _shortened(record.model_sha256)),
        ("versions", versions),
        ("test_accuracy", record.test_accuracy),
    ]
    if isinstance(manifest.get("mlflow"), dict):
        header.extend(("mlflow." + key, value) for key, value in mlflow_record_shown(manifest["mlflow"]).items())
    lines = _section(f"run {record.name}", header)
    lines += ["", *_section("model", model_rows(record))]
    lines += ["", "arguments", *_packed(list(record.arguments.items()))]
    environment = {key: manifest[key] for key in SHOWN_ENVIRONMENT if manifest.get(key) and key != "lock_files"}
    dataset = manifest.get("dataset") if isinstance(manifest.get("dataset"), dict) else {}
    pairs = [*_flatten(environment), *_flatten({"dataset": dataset})]
    pairs = [(key, _shortened(value)) for key, value in pairs if not any("sha256" in part for part in key.split("."))]
    lines += ["", "environment (--full: every hash)", *_packed(pairs)]
    if record.history:
        shown = record.history[-SHOWN_EPOCHS:]
        title = "metrics per epoch" + (
            f" (the last {len(shown)} of {len(record.history)}; --full: all)"
            if len(shown) < len(record.history)
            else ""
        )
        lines += ["", title, _indent(format_table(shown, HISTORY_COLUMNS))]
    if record.class_accuracy:
        lines += ["", "test accuracy per class", *_packed(list(record.class_accuracy.items()))]
    lines += ["", "files (bytes)", *_packed(list(files.items()))]
    return "\n".join(lines)


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


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def show_command(config: ShowConfig) -> int:
    record = find_run(config.experiments_folder, config.run)
    versions = version_labels(registered_versions(config.experiments_folder, config.tracking_uri)).get(record.name, [])
    files = _files_of(record)
    if config.format == "json":
        document = {
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
        print(to_strict_json(document), end="")
    elif config.full:
        print(show_text(record, files, versions))
    else:
        print(show_brief(record, files, versions))
    return 0


# --- compare ---


def differing_arguments(records: Sequence[RunRecord]) -> list[tuple[str, list]]:
    # The architecture is compared in the model's section, where an earlier version's run counts as net.
    keys = sorted({key for record in records for key in record.arguments} - {*NAME_ARGUMENTS, "architecture"})
    rows = [(key, [record.arguments.get(key) for record in records]) for key in keys]
    return [(key, values) for key, values in rows if any(value != values[0] for value in values)]


def differing_model(records: Sequence[RunRecord]) -> list[tuple[str, list]]:
    """The parts of the runs' model specs that differ (an earlier version's run counts as Net at 32 x 32)."""
    specs = [record.spec.to_dict() if record.spec else {} for record in records]
    keys = ("architecture", "image_size", "mean", "std", "classes")
    rows = [(key, [spec.get(key) for spec in specs]) for key in keys]
    differing = [(key, values) for key, values in rows if any(value != values[0] for value in values)]
    return [(key, [_short_classes(v) for v in values] if key == "classes" else values) for key, values in differing]


def _short_classes(classes: list | None) -> str | None:
    """A class list that fits a table cell: its count, and its first names (ImageNet has 1000)."""
    if classes is None:
        return None
    shown = ", ".join(classes)
    return f"{len(classes)}: {shown if len(shown) <= 60 else shown[:57] + '...'}"


def final_metrics(record: RunRecord) -> dict[str, float | None]:
    last = record.history[-1] if record.history else {}
    return {
        "test_accuracy": record.test_accuracy,
        "train_loss": last.get("train_loss"),
        "test_loss": last.get("test_loss"),
        "images_per_second": last.get("images_per_second"),
        "epochs": len(record.history) if record.metrics else None,
        "duration_s": record.duration_seconds,
    }


def _with_difference(value, first) -> str:
    """A value and its difference to the first run's, when both are numbers."""
    if isinstance(value, (int, float)) and isinstance(first, (int, float)) and not isinstance(value, bool):
        difference = value - first
        shown = f"{difference:+.0f}" if abs(difference) >= 1000 else f"{difference:+.4g}"
        return f"{_cell(value)} ({shown})"
    return _cell(value)


def _side_by_side(title: str, rows: Sequence[tuple[str, list]], names: Sequence[str], differences: bool) -> str:
    def cells(values: list) -> dict:
        shown = [_with_difference(v, values[0]) if differences and i else _cell(v) for i, v in enumerate(values)]
        return dict(zip(names, shown))

    table = [{"": key, **cells(values)} for key, values in rows]
    if not table:
        return f"{title}\n  (none)"
    return f"{title}\n{_indent(format_table(table, ['', *names]))}"


def compare_text(records: Sequence[RunRecord]) -> str:
    names = [record.name for record in records]
    notes = [f"note: {record.name} is {record.status} ({record.reason})" for record in records if record.reason]
    metric_names = list(final_metrics(records[0]))
    metrics = [final_metrics(record) for record in records]
    classes = list(dict.fromkeys(name for record in records for name in record.class_accuracy))
    parts = [
        *notes,
        _side_by_side("model that differs", differing_model(records), names, differences=False),
        _side_by_side("arguments that differ", differing_arguments(records), names, differences=False),
        _side_by_side(
            "final metrics (in brackets: difference to the first run)",
            [(metric, [values[metric] for values in metrics]) for metric in metric_names],
            names,
            differences=True,
        ),
        _side_by_side(
            "test accuracy per class (%)",
            [(name, [record.class_accuracy.get(name) for record in records]) for name in classes],
            names,
            differences=True,
        ),
    ]
    return "\n\n".join(parts)


def compare_document(records: Sequence[RunRecord]) -> dict:
    """What `compare` shows, for machines: every section's values listed in the order of the runs."""
    specs = [record.spec.to_dict() if record.spec else {} for record in records]
    model_keys = [key for key, _ in differing_model(records)]
    metrics = [final_metrics(record) for record in records]
    classes = list(dict.fromkeys(name for record in records for name in record.class_accuracy))
    return {
        "runs": [{"run": record.name, "status": record.status, "reason": record.reason} for record in records],
        "model_differences": {key: [spec.get(key) for spec in specs] for key in model_keys},
        "argument_differences": dict(differing_arguments(records)),
        "final_metrics": {metric: [values[metric] for values in metrics] for metric in metrics[0]},
        "class_accuracy": {name: [record.class_accuracy.get(name) for record in records] for name in classes},
    }


def write_comparison_plot(records: Sequence[RunRecord], path: Path) -> None:
    # matplotlib only when a plot is asked for: it is the slowest import here.
    from image_classifier.visualization.plot import plot_curves

    figure = plot_curves({record.name: record.history for record in records}, "Runs compared")
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write the plot to {path}: {exc.strerror}") from None


def compare_command(config: CompareConfig) -> int:
    records = [find_run(config.experiments_folder, reference) for reference in config.runs]
    if config.format == "json":
        print(to_strict_json(compare_document(records)), end="")
    else:
        print(compare_text(records))
    if config.plot is not None:
        write_comparison_plot(records, config.plot)
        # stdout holds the JSON document alone, for the program that reads it
        print(f"\ncurves plotted to {config.plot}", file=sys.stderr if config.format == "json" else sys.stdout)
    return 0


# --- the registry ---


def _describe(version: ModelVersion) -> str:
    aliases = f" (aliases: {', '.join(version.aliases)})" if version.aliases else ""
    return f"{version.name} version {version.version}{aliases}"


def register_command(config: RegisterConfig) -> int:
    record = find_run(config.experiments_folder, config.run)
    registry = open_registry(config.experiments_folder, config.tracking_uri)
    version = registry.register(record.folder, config.name, config.aliases)
    print(f"registered {config.run} as {_describe(version)} in {registry.location}")
    print(f"use it as models:/{version.name}/{version.version}")
    return 0


def alias_command(config: AliasConfig) -> int:
    registry = open_registry(config.experiments_folder, config.tracking_uri)
    version = registry.set_alias(config.name, config.alias, config.version)
    print(f"models:/{config.name}@{config.alias} is now {_describe(version)} (from {version.source_run})")
    return 0


def model_row(version: ModelVersion) -> dict:
    return {
        "name": version.name,
        "version": version.version,
        "aliases": list(version.aliases),
        "source_run": version.source_run,
        "test_accuracy": version.test_accuracy,
        "registered_at": version.registered_at,
        "sha256": version.sha256,
    }


def models_command(config: ModelsConfig) -> int:
    registry = open_registry(config.experiments_folder, config.tracking_uri)
    rows = [model_row(version) for version in registry.versions(config.name)]
    if config.format == "table":
        for row in rows:
            row["sha256"] = row["sha256"][:SHA_PREFIX]
    if not rows and config.format == "table":
        print(f"no models registered in {registry.location} yet")
        return 0
    print(format_rows(rows, MODEL_COLUMNS, config.format))
    return 0


# --- the command line ---


def _common_options() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--experiments_folder", type=Path, default=Path("experiments"), help="where the runs are (as in the trainer)"
    )
    add_verbose_option(common)
    return common


def _tracking_option() -> argparse.ArgumentParser:
    tracking = ArgumentParser(add_help=False)
    tracking.add_argument(
        "--mlflow_tracking_uri",
        default=None,
        help=f"MLflow tracking server whose model registry to use (default: ${TRACKING_URI_ENV}; "
        "neither set: the registry file in the experiments folder)",
    )
    return tracking


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="image_classifier_runs",
        description="List, show and compare the runs in an experiments folder; register their models as "
        "named versions and move aliases.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, tracking = _common_options(), _tracking_option()
    formats = ("table", "csv", "json")

    listing = commands.add_parser(
        "list",
        parents=[common, tracking],
        help="one row per run",
        description="One " "row per run, finished or not; unreadable runs are listed with the reason.",
    )
    listing.add_argument("--experiment", default=None, help="only this experiment's runs (default: all)")
    listing.add_argument("--sort", choices=LIST_COLUMNS, default="started", help="the column to sort by")
    listing.add_argument("--descending", action="store_true", help="largest first (runs without a value stay last)")
    listing.add_argument("--format", choices=formats, default="table", help="output format")
    listing.add_argument(
        "--wide",
        action="store_true",
        help="the table with every column (architecture, hyperparameters, duration, model sha256), as CSV and "
        "JSON have them",
    )

    show = commands.add_parser(
        "show",
        parents=[common, tracking],
        help="one run in full",
        description="A run's arguments, environment, metrics per epoch and files.",
    )
    show.add_argument("run", help="EXPERIMENT/RUN")
    show.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    show.add_argument(
        "--full",
        action="store_true",
        help="the text with every value in full: each hash whole, the lock files' and dataset files' hashes, "
        "every epoch (JSON always has them)",
    )

    compare = commands.add_parser(
        "compare",
        parents=[common],
        help="runs side by side",
        description="The arguments that differ, final metrics with their differences "
        "to the first run, and per-class accuracy, side by side.",
    )
    compare.add_argument("runs", nargs="+", metavar="EXPERIMENT/RUN", help="two or more runs")
    compare.add_argument(
        "--plot", type=Path, default=None, help="also write their loss and accuracy curves to " "this PNG file"
    )
    compare.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    register = commands.add_parser(
        "register",
        parents=[common, tracking],
        help="add a run's model as a version",
        description="Add a completed run's model.pth as the next version of NAME.",
    )
    register.add_argument("run", help="EXPERIMENT/RUN, a completed run")
    register.add_argument("--name", required=True, help="model name (letters, digits, . _ -); required")
    register.add_argument(
        "--alias",
        action="append",
        default=[],
        dest="aliases",
        help="an alias to point at the new version (e.g. production); repeatable",
    )

    alias = commands.add_parser(
        "alias",
        parents=[common, tracking],
        help="point an alias at a version",
        description="Point ALIAS of model NAME at VERSION (moving it if it was elsewhere).",
    )
    alias.add_argument("name", help="model name")
    alias.add_argument("alias", help="alias (letters, digits, . _ -; not a number, not 'latest')")
    alias.add_argument("version", type=positive_int, help="version number")

    models = commands.add_parser(
        "models",
        parents=[common, tracking],
        help="registered models and versions",
        description="Registered models: versions, aliases, source runs, test accuracy.",
    )
    models.add_argument("name", nargs="?", default=None, help="only this model (default: all)")
    models.add_argument("--format", choices=formats, default="table", help="output format")
    return parser


def config_from_args(args: argparse.Namespace):
    folder = args.experiments_folder
    uri = tracking_uri_from(getattr(args, "mlflow_tracking_uri", None))
    if args.command == "list":
        return ListConfig(folder, uri, args.experiment, args.sort, args.descending, args.format, args.wide)
    if args.command == "show":
        return ShowConfig(folder, uri, args.run, args.format, args.full)
    if args.command == "compare":
        return CompareConfig(folder, tuple(args.runs), args.plot, args.format)
    if args.command == "register":
        return RegisterConfig(folder, uri, args.run, args.name, tuple(args.aliases))
    if args.command == "alias":
        return AliasConfig(folder, uri, args.name, args.alias, args.version)
    return ModelsConfig(folder, uri, args.name, args.format)


COMMANDS: dict[type, Callable] = {
    ListConfig: list_command,
    ShowConfig: show_command,
    CompareConfig: compare_command,
    RegisterConfig: register_command,
    AliasConfig: alias_command,
    ModelsConfig: models_command,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and len(args.runs) < 2:
        parser.error("compare needs two or more runs")
    configure_logging(args.verbose)
    config = config_from_args(args)
    uri = getattr(config, "tracking_uri", None)
    if uri:
        logger.debug("MLflow tracking server %s", redacted(uri))
    try:
        return exit_code_of(lambda: COMMANDS[type(config)](config))
    except BrokenPipeError:
        # The reader stopped early (`| head`): not an error. Point stdout at /dev/null so that Python's
        # final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
