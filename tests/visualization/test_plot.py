from image_classifier.visualization.plot import plot_confusion_matrix, plot_curves, plot_metrics


def test_one_labelled_bar_per_class_and_total():
    figure = plot_metrics(55.5, {"plane": 50.0, "car": 61.0}, title="run_1")
    axes = figure.axes[0]
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["plane", "car", "total"]
    assert [patch.get_height() for patch in axes.patches] == [50.0, 61.0, 55.5]
    assert [text.get_text() for text in axes.texts] == ["50.0", "61.0", "55.5"]
    assert axes.get_title() == "run_1"


def test_a_class_without_test_images_is_marked_not_applicable():
    axes = plot_metrics(50.0, {"plane": None, "car": 50.0}).axes[0]
    assert [text.get_text() for text in axes.texts] == ["n/a", "50.0", "50.0"]


def test_curves_show_every_runs_losses_and_accuracy_and_skip_missing_values():
    history = [
        {"epoch": 1, "train_loss": 2.0, "test_loss": 1.8, "test_accuracy": 40.0},
        {"epoch": 2, "train_loss": 1.0, "test_loss": 1.2, "test_accuracy": 60.0},
    ]
    older = [{"epoch": 1, "train_loss": 2.2, "test_accuracy": 30.0}]  # an older run: no test loss
    figure = plot_curves({"e/a": history, "e/b": older}, "compared")
    loss_axes, accuracy_axes = figure.axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss_axes.lines}
    assert lines["e/a: training loss"] == ([1, 2], [2.0, 1.0])
    assert lines["e/a: test loss"] == ([1, 2], [1.8, 1.2])
    assert lines["e/b: test loss"] == ([], [])
    assert [list(line.get_ydata()) for line in accuracy_axes.lines] == [[40.0, 60.0], [30.0]]
    assert figure._suptitle.get_text() == "compared"


def test_curves_of_a_run_without_epochs_say_so_without_an_epoch_axis():
    figure = plot_curves({"e/r": []}, "e/r: loss and accuracy per epoch")
    (axes,) = figure.axes
    (text,) = [t.get_text() for t in axes.texts]
    assert text.startswith("no epoch trained (--num_epochs 0)") and "metrics.png" in text
    assert not axes.axison and not axes.lines and axes.get_xlabel() == ""  # no meaningless epoch axis
    assert figure._suptitle.get_text() == "e/r: loss and accuracy per epoch"


def test_the_confusion_matrix_shows_counts_and_row_percentages():
    counts = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]  # the third class has no test image
    figure = plot_confusion_matrix(counts, ["a", "b", "c"])
    axes = figure.axes[0]
    texts = [text.get_text() for text in axes.texts]
    assert texts[:3] == ["8\n80%", "2\n20%", "0"] and texts[3:5] == ["1\n25%", "3\n75%"]
    assert [tick.get_text() for tick in axes.get_yticklabels()] == ["a (10)", "b (4)", "c (0)"]
    assert axes.get_xlabel() == "predicted class" and axes.get_ylabel().startswith("true class")
