"""The notebook runs top to bottom (offline, on a small generated dataset) in a real kernel."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from image_classifier.data.synthetic import generate_dataset
from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "mlops_project_classifier.ipynb"
# Fewer test images than classes: images go to the classes in label order, so horse, ship and truck get none.
NOTEBOOK_TEST_SIZE = 7


@pytest.fixture(scope="module")
def dataset_with_classes_lacking_test_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("notebook_dataset")
    generate_dataset(folder, train_size=300, test_size=NOTEBOOK_TEST_SIZE, seed=0)
    return folder


def execute_notebook(dataset_folder: Path, monkeypatch) -> str:
    """Run every cell in a fresh kernel; return the text the cells printed."""
    monkeypatch.setenv("IMAGE_CLASSIFIER_DATASET", str(dataset_folder))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the sample grid and the metrics chart
    return "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.slow
def test_notebook_executes_and_shows_n_a_for_classes_without_test_images(
    dataset_with_classes_lacking_test_images, monkeypatch
):
    outputs = execute_notebook(dataset_with_classes_lacking_test_images, monkeypatch)
    assert f"Accuracy of the network on the {NOTEBOOK_TEST_SIZE} test images" in outputs
    assert "Accuracy for class: truck is n/a" in outputs
    assert "Accuracy for class: plane is " in outputs and "Accuracy for class: plane is n/a" not in outputs


@pytest.mark.slow
def test_notebook_never_generates_data_into_a_folder_named_like_the_real_dataset(tmp_path, monkeypatch):
    real_dataset = tmp_path / "data" / "cifar_dataset"
    with pytest.raises(CellExecutionError, match="not found"):
        execute_notebook(real_dataset, monkeypatch)
    assert not real_dataset.exists()
