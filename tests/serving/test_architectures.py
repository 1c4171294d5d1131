"""Models built from their run's spec: a torchvision ResNet-18 run served, predicted and resolved from the
registry, agreeing with its offline evaluation; and version 1.0.0's run (no spec) served as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier.data.data import load_dataset, preprocess
from image_classifier.model.architectures import build_model
from image_classifier.model.model import Net
from image_classifier.model.spec import spec_of_run
from image_classifier.normalization import IMAGENET_MEAN, IMAGENET_STD, normalize
from tests.conftest import FIXTURES, command, run_command, run_trainer, trainer_args
from tests.serving.conftest import running_server

pytestmark = pytest.mark.slow

OLDER_RUN = FIXTURES / "older_experiments" / "local_exp_test" / "run_1"


@pytest.fixture(scope="module")
def resnet_run(dataset, tmp_path_factory) -> Path:
    """experiments/e/resnet: one epoch of resnet18 on the generated dataset."""
    experiments = tmp_path_factory.mktemp("resnet") / "experiments"
    args = trainer_args(dataset, experiments, "resnet", "--architecture", "resnet18", "--num_epochs", "1")
    result = run_trainer(*args, "--batch_size", "10")
    assert result.returncode == 0, result.stderr
    return experiments / "e" / "resnet"


@pytest.fixture(scope="module")
def split(dataset):
    return load_dataset(dataset)


@pytest.fixture(scope="module")
def split_pngs(split, tmp_path_factory) -> list[Path]:
    """The test split as 32 x 32 RGB PNG files, in order (lossless: the served pixels are the split's)."""
    folder = tmp_path_factory.mktemp("split_pngs")
    paths = []
    for index, image in enumerate(split.test.images.numpy()):
        paths.append(folder / f"{index:03d}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(paths[-1])
    return paths


def offline_probabilities(model: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return torch.softmax(model(inputs), dim=1).numpy()


@pytest.fixture(scope="module")
def resnet_offline(resnet_run, split) -> np.ndarray:
    """The test split through the run's weights, built from its spec, normalised as its spec says."""
    spec = spec_of_run(json.loads((resnet_run / "run.json").read_text()))
    model = build_model(spec)
    model.load_state_dict(torch.load(resnet_run / "model.pth", weights_only=True))
    return offline_probabilities(model, normalize(split.test.images, spec.mean, spec.std))


def assert_agrees_with_the_offline_evaluation(predicted: list[int], run_dir: Path, labels: np.ndarray) -> None:
    """The confusion matrix and accuracy of these predictions are those the trainer's evaluation recorded."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    classes = len(metrics["confusion_matrix"])
    confusion = np.zeros((classes, classes), dtype=int)
    np.add.at(confusion, (labels, np.asarray(predicted)), 1)
    assert confusion.tolist() == metrics["confusion_matrix"]
    assert 100.0 * float(np.mean(np.asarray(predicted) == labels)) == pytest.approx(metrics["test_accuracy"])


def batch_predictions(url: str, paths: list[Path]) -> list[dict]:
    results = []
    with httpx.Client(timeout=300) as client:
        for start in range(0, len(paths), 40):  # under --max_batch_images (64)
            files = [("files", (path.name, path.read_bytes(), "image/png")) for path in paths[start : start + 40]]
            answer = client.post(url + "/predict/batch?top_k=10", files=files)
            assert answer.status_code == 200, answer.text
            results.extend(answer.json()["results"])
    return results


def test_the_resnet_run_records_its_spec(resnet_run):
    spec = json.loads((resnet_run / "run.json").read_text())["model_spec"]
    assert (spec["architecture"], spec["image_size"]) == ("resnet18", 32)
    assert (tuple(spec["mean"]), tuple(spec["std"])) == (IMAGENET_MEAN, IMAGENET_STD)


def test_predicting_with_the_resnet_run_agrees_with_its_offline_evaluation(
    resnet_run, resnet_offline, split, split_pngs
):
    result = run_command(
        [command("image_classifier_predict"), "--model", str(resnet_run), "--format", "json", "--top_k", "10"]
        + ["--batch_size", "13", str(split_pngs[0].parent)],
        password=None,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert [row["image"] for row in rows] == [str(path) for path in split_pngs]
    for index, row in enumerate(rows):
        by_label = {p["label"]: p["probability"] for p in row["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in range(10)], resnet_offline[index], atol=1e-5)
    predicted = [row["predictions"][0]["label"] for row in rows]
    assert predicted == resnet_offline.argmax(axis=1).tolist()
    assert_agrees_with_the_offline_evaluation(predicted, resnet_run, split.test.labels.numpy())


def test_serving_the_resnet_run_and_its_registered_version_agrees_with_its_offline_evaluation(
    resnet_run, resnet_offline, split, split_pngs, tmp_path
):
    experiments = resnet_run.parent.parent
    registered = run_command(
        [command("image_classifier_runs"), "register", "e/resnet", "--name", "resnet", "--alias", "production"]
        + ["--experiments_folder", str(experiments)],
        password=None,
        env={"MLFLOW_TRACKING_URI": ""},
    )
    assert registered.returncode == 0, registered.stderr
    for model in (str(resnet_run), "models:/resnet@production"):
        with running_server(tmp_path, "--model", model, "--experiments_folder", str(experiments)) as server:
            metadata = httpx.get(server.url + "/metadata", timeout=60).json()["model"]
            results = batch_predictions(server.url, split_pngs)
        assert (metadata["architecture"], metadata["image_size"]) == ("resnet18", 32)
        assert (tuple(metadata["mean"]), tuple(metadata["std"])) == (IMAGENET_MEAN, IMAGENET_STD)
        assert metadata["classes"] == list(split.classes)
        for index, row in enumerate(results):
            by_label = {p["label"]: p["probability"] for p in row["predictions"]}
            np.testing.assert_allclose([by_label[c] for c in range(10)], resnet_offline[index], atol=1e-5)
        predicted = [row["predictions"][0]["label"] for row in results]
        assert_agrees_with_the_offline_evaluation(predicted, resnet_run, split.test.labels.numpy())


def test_version_1_0_0s_run_is_served_and_predicted_as_before(split, split_pngs, tmp_path):
    """No model spec in its run.json, no classes either: the notebook's Net at 32 x 32, the notebook's
    normalisation, the classes in metrics.json's order."""
    run = tmp_path / "run_1"
    shutil.copytree(OLDER_RUN, run)
    assert "model_spec" not in json.loads((run / "run.json").read_text())
    classes = list(json.loads((run / "metrics.json").read_text())["class_accuracy"])
    net = Net(len(classes))
    net.load_state_dict(torch.load(run / "model.pth", weights_only=True))
    expected = offline_probabilities(net, preprocess(split.test.images))  # the notebook's transforms

    with running_server(tmp_path, "--model", str(run)) as server:
        metadata = httpx.get(server.url + "/metadata", timeout=60).json()["model"]
        results = batch_predictions(server.url, split_pngs)
    assert (metadata["architecture"], metadata["image_size"], metadata["mean"]) == ("net", 32, [0.5, 0.5, 0.5])
    assert metadata["classes"] == classes
    for index, row in enumerate(results):
        by_label = {p["label"]: p["probability"] for p in row["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in range(10)], expected[index], atol=1e-5)

    predicted = run_command(
        [command("image_classifier_predict"), "--model", str(run), "--format", "json", "--top_k", "1"]
        + [str(path) for path in split_pngs[:5]],
        password=None,
    )
    assert predicted.returncode == 0, predicted.stderr
    top = [row["predictions"][0] for row in json.loads(predicted.stdout)["results"]]
    assert [t["class"] for t in top] == [classes[i] for i in expected[:5].argmax(axis=1)]


def test_a_bare_model_of_another_architecture_and_size_is_predicted_from_its_metadata(split_pngs, tmp_path, capsys):
    """metadata.json beside a bare model.pth names its spec: the images are converted at its size (64 x 64
    from the 32 x 32 PNGs) and normalised with its architecture's normalisation."""
    from image_classifier.images import decode_image
    from image_classifier.model.spec import new_spec
    from image_classifier.serving.predict import main as predict_main

    spec = new_spec("mobilenet_v3_small", 64, ["a", "b", "c"])
    torch.manual_seed(0)
    model = build_model(spec)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    metadata = {"classes": list(spec.classes), "architecture": spec.architecture, "image_size": 64}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    chosen = split_pngs[:4]
    assert predict_main(["--model", str(tmp_path / "weights.pth"), "--format", "json", *map(str, chosen)]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]

    images = torch.from_numpy(np.stack([decode_image(path.read_bytes(), image_size=64) for path in chosen]))
    expected = offline_probabilities(model, normalize(images, IMAGENET_MEAN, IMAGENET_STD))
    for index, row in enumerate(rows):
        by_label = {p["label"]: p["probability"] for p in row["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in range(3)], expected[index], atol=1e-5)

    metadata["architecture"] = "resnet18"  # the wrong architecture: refused, saying so
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    assert predict_main(["--model", str(tmp_path / "weights.pth"), str(chosen[0])]) == 1
    assert "(resnet18 for 3 classes at 64 x 64) does not fit the model" in capsys.readouterr().err
