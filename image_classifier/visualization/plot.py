"""A run's figures, drawn from the metrics they are given: the seed's accuracy bars, the loss and accuracy
curves per epoch, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_metrics(test_accuracy: float, class_accuracy: dict[str, float | None], title: str = "") -> Figure:
    """Return a figure with one bar per class and a last "total" bar, each labelled with its value.

    A bare `Figure` (not pyplot) needs no display backend and leaves no global state behind.
    """
    names = [*class_accuracy, "total"]
    values = [*class_accuracy.values(), test_accuracy]
    colors = ["tab:blue"] * len(class_accuracy) + ["tab:orange"]
    figure = Figure(figsize=(10, 5), layout="constrained")
    axes = figure.subplots()
    bars = axes.bar(names, [value or 0.0 for value in values], color=colors)
    # A class without test images has no accuracy (None): an empty bar labelled n/a.
    labels = ["n/a" if value is None else f"{value:.1f}" for value in values]
    axes.bar_label(bars, labels=labels, padding=2)
    axes.set_ylim(0, 105)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title or "Test accuracy per class and in total")
    return figure


def _series(history: Sequence[Mapping], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of `key`, skipping epochs without it (runs of older versions have no test loss)."""
    points = [(entry["epoch"], entry[key]) for entry in history if entry.get(key) is not None]
    return [epoch for epoch, _ in points], [value for _, value in points]


def plot_curves(histories: Mapping[str, Sequence[Mapping]], title: str = "") -> Figure:
    """Loss (training solid, test dashed) and test accuracy per epoch, one colour per run.

    `histories` maps a label (a run's name) to its metrics.json `history`; one run gives a run's curves.png,
    several overlay them (image_classifier_runs compare --plot).
    """
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    if not any(histories.values()):  # --num_epochs 0: an evaluation only, no epoch axis to draw
        axes = figure.subplots()
        axes.set_axis_off()
        axes.text(
            0.5,
            0.5,
            "no epoch trained (--num_epochs 0): no loss or accuracy per epoch to plot\n"
            "the evaluation's results are in metrics.png and metrics.json",
            ha="center",
            va="center",
            fontsize="x-large",
            transform=axes.transAxes,
        )
        if title:
            figure.suptitle(title)
        return figure
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    colors = matplotlib.colormaps["tab10"].colors
    for index, (label, history) in enumerate(histories.items()):
        color = colors[index % len(colors)]
        prefix = f"{label}: " if len(histories) > 1 else ""
        # One run: training and test loss in two colours; several: one colour per run, test loss dashed.
        test_color = colors[1] if len(histories) == 1 else color
        loss_axes.plot(*_series(history, "train_loss"), "o-", color=color, label=f"{prefix}training loss")
        loss_axes.plot(*_series(history, "test_loss"), "s--", color=test_color, label=f"{prefix}test loss")
        accuracy_axes.plot(*_series(history, "test_accuracy"), "o-", color=color, label=label)
    loss_axes.set_title("Loss per epoch (cross-entropy)")
    loss_axes.set_ylabel("mean loss")
    losses = [value for line in loss_axes.lines for value in line.get_ydata() if np.isfinite(value)]
    # From 0 and with room above the highest loss, so nearly flat curves do not hide under the frame.
    loss_axes.set_ylim(0, 1.1 * max(losses) if losses else 1)
    accuracy_axes.set_title("Test accuracy per epoch")
    accuracy_axes.set_ylabel("test accuracy (%)")
    accuracy_axes.set_ylim(0, 100)
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_confusion_matrix(counts: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> Figure:
    """Rows are true classes, columns predicted ones; each cell shows its count and its row percentage
    (the share of that class's test images predicted as the column's class), shaded by that percentage."""
    matrix = np.asarray(counts, dtype=np.int64)
    row_totals = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)
    size = max(6.0, 0.75 * len(classes) + 2)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, label="% of the true class", shrink=0.8)
    for row, column in np.ndindex(matrix.shape):
        # White text on dark cells, black on light ones, so every number reads.
        color = "white" if percent[row, column] > 60 else "black"
        text = f"{matrix[row, column]}\n{percent[row, column]:.0f}%" if matrix[row, column] else "0"
        axes.text(column, row, text, ha="center", va="center", color=color, fontsize=9)
    labels = [f"{name} ({int(total)})" for name, total in zip(classes, row_totals[:, 0])]
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (test images)")
    axes.set_title(title or "Confusion matrix: counts and % of each true class")
    return figure
