import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_classifier.errors import ModelSpecError
from image_classifier.model.spec import MAX_IMAGE_SIZE, ModelSpec, new_spec, spec_of_run
from image_classifier.normalization import IMAGENET_MEAN, IMAGENET_STD, NOTEBOOK_MEAN, NOTEBOOK_STD
from tests.conftest import FIXTURES

CLASSES = ("cat", "dog")

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
specs = st.builds(
    ModelSpec,
    architecture=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
    classes=st.lists(names, min_size=2, max_size=20, unique=True).map(tuple),
    image_size=st.integers(1, MAX_IMAGE_SIZE),
    mean=st.tuples(*[st.floats(-10, 10)] * 3),
    std=st.tuples(*[st.floats(1e-6, 10)] * 3),
)


@given(specs)
def test_a_spec_survives_run_json(spec):
    document = json.loads(json.dumps({"model_spec": spec.to_dict()}))
    assert spec_of_run(document) == spec


def test_new_runs_normalise_net_as_the_notebook_and_torchvision_models_as_imagenet():
    assert (new_spec("net", 32, CLASSES).mean, new_spec("net", 32, CLASSES).std) == (NOTEBOOK_MEAN, NOTEBOOK_STD)
    resnet = new_spec("resnet18", 64, CLASSES)
    assert (resnet.mean, resnet.std, resnet.image_size) == (IMAGENET_MEAN, IMAGENET_STD, 64)


def test_the_older_example_run_reads_as_the_notebooks_net_at_32_pixels():
    run_dir = FIXTURES / "older_experiments" / "local_exp_test" / "run_1"
    manifest = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "model_spec" not in manifest and "classes" not in manifest  # version 1.0.0 recorded neither
    spec = spec_of_run(manifest, metrics)
    assert spec == ModelSpec("net", tuple(metrics["class_accuracy"]), 32, NOTEBOOK_MEAN, NOTEBOOK_STD)
    assert spec.classes[:3] == ("plane", "car", "bird")


def test_an_older_runs_classes_in_run_json_come_first():
    assert spec_of_run({"classes": ["a", "b"]}, {"class_accuracy": {"x": 1, "y": 2}}).classes == ("a", "b")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "ResNet18"}, "invalid architecture name"),
        ({"architecture": "../evil"}, "invalid architecture name"),
        ({"image_size": 0}, "not from 1 to"),
        ({"image_size": 10**9}, "not from 1 to"),
        ({"image_size": 32.0}, "whole number"),
        ({"image_size": True}, "whole number"),
        ({"std": [0.5, 0, 0.5]}, "three positive numbers"),
        ({"mean": [0.5, 0.5]}, "three numbers"),
        ({"mean": "0.5"}, "three numbers"),
        ({"mean": [float("nan"), 0, 0]}, "three numbers"),
        ({"classes": ["a"]}, "at least two"),
        ({"classes": ["a", "a"]}, "unique"),
        ({"classes": "ab"}, "at least two"),
        ({"classes": ["a", 1]}, "at least two"),
        # A run trained on a folder named in Latin-1 (before such folders were refused): every answer of
        # the service naming the class was a 500. A line break forges log and table lines.
        ({"classes": ["caf\udce9", "b"]}, r"UTF-8 text without control characters, not 'caf\\udce9'"),
        ({"classes": ["a\nb", "c"]}, r"UTF-8 text without control characters, not 'a\\nb'"),
    ],
)
def test_a_damaged_spec_is_a_clear_error(change, message):
    document = {**new_spec("resnet18", 32, CLASSES).to_dict(), **change}
    with pytest.raises(ModelSpecError, match=message) as error:
        spec_of_run({"model_spec": document}, source="x/run.json")
    assert str(error.value).startswith("x/run.json: ")


@pytest.mark.parametrize("spec", [[], "net", {"architecture": "net"}])
def test_what_is_not_a_spec_is_a_clear_error(spec):
    with pytest.raises(ModelSpecError, match="x/run.json: the model spec"):
        spec_of_run({"model_spec": spec}, source="x/run.json")


def test_a_run_without_spec_or_classes_is_a_clear_error():
    with pytest.raises(ModelSpecError, match="names neither a model spec nor the classes"):
        spec_of_run({"status": "completed"}, {})


def test_reading_specs_imports_no_torch():
    probe = (
        "import sys\n"
        "from image_classifier.model.spec import new_spec, spec_of_run\n"
        "spec_of_run({'model_spec': new_spec('resnet18', 64, ['a', 'b']).to_dict()})\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=600)
