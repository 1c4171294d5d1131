from image_classifier.visualization.plot import plot_metrics


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
