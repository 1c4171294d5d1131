"""What `image_classifier_runs compare` shows of two or more runs: the model and arguments that differ,
final metrics with their differences to the first run, per-class accuracy; as text side by side, as one
document for programs, and as a plot of their curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from image_classifier.errors import UserError
from image_classifier.tracking.records import RunRecord
from image_classifier.tracking.tables import cell, format_table, indent

NAME_ARGUMENTS = ("experiment_name", "run_name")  # in every compare's header already


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
        return f"{cell(value)} ({shown})"
    return cell(value)


def _side_by_side(title: str, rows: Sequence[tuple[str, list]], names: Sequence[str], differences: bool) -> str:
    def cells(values: list) -> dict:
        shown = [_with_difference(v, values[0]) if differences and i else cell(v) for i, v in enumerate(values)]
        return dict(zip(names, shown))

    table = [{"": key, **cells(values)} for key, values in rows]
    if not table:
        return f"{title}\n  (none)"
    return f"{title}\n{indent(format_table(table, ['', *names]))}"


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
