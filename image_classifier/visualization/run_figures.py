"""The figures a finished run publishes beside its metrics: accuracy per class, curves, confusion matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from image_classifier.run_dir import CONFUSION_MATRIX_FILE, CURVES_FILE, PLOT_FILE

if TYPE_CHECKING:
    from image_classifier.run_dir import RunDirectory


def save_figures(run_dir: RunDirectory, name: str, metrics: dict, history: list[dict], classes) -> None:
    """Draw the run's three figures (titled with `name`, experiment/run) into its run directory."""
    # matplotlib is imported here, after training, so that it never delays the first step (about 0.5 s).
    from image_classifier.visualization.plot import plot_confusion_matrix, plot_curves, plot_metrics

    accuracy = plot_metrics(
        metrics["test_accuracy"], metrics["class_accuracy"], f"{name}: test accuracy per class and in total"
    )
    run_dir.save_figure(PLOT_FILE, accuracy)
    run_dir.save_figure(CURVES_FILE, plot_curves({name: history}, f"{name}: loss and accuracy per epoch"))
    confusion = plot_confusion_matrix(metrics["confusion_matrix"], classes, f"{name}: confusion matrix (test set)")
    run_dir.save_figure(CONFUSION_MATRIX_FILE, confusion)
