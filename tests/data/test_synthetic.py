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


def test_the_refusal_of_an_existing_dataset_says_what_to_do(tmp_path, capsys):
    output = tmp_path / "sample_dataset"
    assert main(["--output", str(output), "--train_size", "10", "--test_size", "5", "--train_batches", "1"]) == 0
    assert main(["--output", str(output), "--train_size", "10", "--test_size", "5", "--train_batches", "1"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {output / 'cifar-10-batches-py'} already exists")
    assert f"--dataset_folder {output}" in line  # use it as it is...
    assert f"delete {output / 'cifar-10-batches-py'} first" in line  # ...or generate it again


def test_the_refusal_of_an_existing_image_folder_says_what_to_do(tmp_path, capsys):
    output = tmp_path / "images"
    argv = [
        "--image_folder",
        "--output",
        str(output),
        "--train_size",
        "10",
        "--test_size",
        "10",
        "--min_side",
        "4",
        "--max_side",
        "8",
    ]
    assert main(argv) == 0
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--dataset_folder {output}" in line and f"delete {output} first" in line


HYPHENATED = ["--train-size", "20", "--test-size", "10", "--train-batches", "2", "--min-side", "8", "--max-side", "9"]


@pytest.mark.parametrize("form", ["cifar", "folder", "no test folder"])
def test_options_are_spelled_with_underscores_and_the_hyphen_spellings_still_work(tmp_path, form):
    extra = {"cifar": [], "folder": ["--image-folder"], "no test folder": ["--image-folder", "--no-test-folder"]}[form]
    hyphens = [*HYPHENATED, *extra]
    underscores = ["--" + option[2:].replace("-", "_") if option.startswith("--") else option for option in hyphens]
    assert underscores != hyphens and "--train_size" in underscores
    assert main(["--output", str(tmp_path / "hyphens"), *hyphens]) == 0
    assert main(["--output", str(tmp_path / "underscores"), *underscores]) == 0
    written = {
        name: {p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}
        for name in ("hyphens", "underscores")
    }
    assert written["hyphens"] == written["underscores"] and written["hyphens"]


def test_help_and_usage_errors_name_the_underscore_spellings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for option in (
        "--train_size",
        "--test_size",
        "--train_batches",
        "--image_folder",
        "--min_side",
        "--no_test_folder",
    ):
        assert option in help_text
        assert option.replace("_", "-") not in help_text.replace("--train-size), as", "")  # the one mention
    with pytest.raises(SystemExit) as exit_info:
        main(["--output", "o", "--train-size", "many"])
    assert exit_info.value.code == 2 and "invalid value for --train_size (not shown)" in capsys.readouterr().err
