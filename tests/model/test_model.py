from collections import OrderedDict

import pytest
import torch

from image_classifier.errors import PretrainedModelError
from image_classifier.model.model import Net, build_model, load_weights, read_state_dict

NOTEBOOK_KEYS = [f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for kind in ("weight", "bias")]


def test_the_notebooks_architecture():
    model = Net()
    assert sum(p.numel() for p in model.parameters()) == 62006
    assert list(model.state_dict()) == NOTEBOOK_KEYS
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)


def test_a_notebook_state_dict_loads_and_gives_the_same_outputs(tmp_path):
    torch.manual_seed(1)
    notebook_net = Net()
    path = tmp_path / "model.pth"
    torch.save(notebook_net.state_dict(), path)  # the notebook's cell 9
    model = build_model(10, torch.device("cpu"))
    load_pretrained(model, path, torch.device("cpu"))
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(images), notebook_net(images))


def load_pretrained(model, path, device):
    load_weights(model, read_state_dict(path, device), path)


def test_missing_file(tmp_path):
    with pytest.raises(PretrainedModelError, match="not found"):
        load_pretrained(Net(), tmp_path / "nope.pth", torch.device("cpu"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "is not a PyTorch state_dict file"),
        ([1, 2, 3], "does not hold a state_dict"),
        (OrderedDict(conv1=torch.zeros(1)), "does not fit the model"),
        (Net(num_classes=3).state_dict(), "does not fit the model"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "model.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(PretrainedModelError, match=message):
        load_pretrained(Net(), path, torch.device("cpu"))


def test_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "model.pth"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(PretrainedModelError, match="is not a PyTorch state_dict file"):
        load_pretrained(Net(), path, torch.device("cpu"))
