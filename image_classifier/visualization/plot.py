"""The seed's bar chart of per-class and total test accuracy, drawn from metrics it is given."""

from __future__ import annotations

from matplotlib.figure import Figure


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
