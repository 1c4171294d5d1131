import json

import numpy as np
import pytest

from image_classifier.data.cifar import load_dataset
from image_classifier.data.synthetic import CLASSES, draw_images, generate_dataset, main
from image_classifier.errors import UserError


def test_same_seed_same_bytes_and_balanced_classes(tmp_path):
    first = generate_dataset(tmp_path / "a", 100, 30, seed=7, train_batches=2)
    second = generate_dataset(tmp_path / "b", 100, 30, seed=7, train_batches=2)
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    data = load_dataset(tmp_path / "a")
    assert np.bincount(data.train.labels.numpy()).tolist() == [10] * 10
    assert json.loads((tmp_path / "a" / "metadata.json").read_text()) == {"classes": list(CLASSES)}


def test_classes_differ_more_than_images_within_a_class():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    images = draw_images(labels, rng).reshape(500, -1).astype(np.float32)
    means = np.stack([images[labels == c].mean(0) for c in range(10)])
    # Nearest class mean already classifies far above chance (10 %): the classes are learnable.
    distances = ((images[:, None, :] - means[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == labels).mean() > 0.5


def test_refuses_to_overwrite_and_bad_sizes(tmp_path):
    generate_dataset(tmp_path, 10, 5, train_batches=1)
    with pytest.raises(UserError, match="already exists"):
        generate_dataset(tmp_path, 10, 5, train_batches=1)
    with pytest.raises(UserError, match="at least one"):
        generate_dataset(tmp_path / "x", 2, 5, train_batches=5)


def test_command_line(tmp_path, capsys):
    assert main(["--output", str(tmp_path / "d"), "--train-size", "20", "--test-size", "5"]) == 0
    assert len(load_dataset(tmp_path / "d").train) == 20
    assert main(["--output", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
