from collections import OrderedDict

import pytest
import torch

from image_classifier.errors import ModelSpecError, PretrainedModelError
from image_classifier.model.model import Net, classifier_head, load_weights, read_state_dict, state_dict_from_bytes

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
    model = Net(10)
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


def test_net_at_32_pixels_is_built_bit_for_bit_as_before_the_image_size_existed():
    """The notebook's layers in the notebook's order: the seeded initial weights are the same bytes."""
    torch.manual_seed(0)
    expected = [
        torch.nn.Conv2d(3, 6, 5),
        torch.nn.Conv2d(6, 16, 5),
        torch.nn.Linear(16 * 5 * 5, 120),
        torch.nn.Linear(120, 84),
        torch.nn.Linear(84, 10),
    ]
    torch.manual_seed(0)
    model = Net(10, image_size=32)
    for layer, built in zip(expected, (model.conv1, model.conv2, model.fc1, model.fc2, model.fc3)):
        assert torch.equal(layer.weight, built.weight) and torch.equal(layer.bias, built.bias)


@pytest.mark.parametrize(
    "size, flattened", [(16, 16), (31, 16 * 4 * 4), (32, 400), (64, 16 * 13 * 13), (97, 16 * 21 * 21)]
)
def test_net_adapts_fc1_to_the_image_size(size, flattened):
    model = Net(3, image_size=size)
    assert model.fc1.in_features == flattened
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)


def test_net_refuses_images_too_small_for_its_convolutions():
    with pytest.raises(ModelSpecError, match="at least 16 x 16"):
        Net(10, image_size=15)


def test_the_head_is_the_last_layer():
    assert classifier_head(Net()) == "fc3"


def test_a_head_of_another_class_count_is_replaced_only_when_asked():
    torch.manual_seed(0)
    source = Net(num_classes=1000)
    torch.manual_seed(1)
    model = Net(num_classes=10)
    own_head = model.fc3.weight.clone()
    with pytest.raises(PretrainedModelError, match=r"fc3.weight \(1000, 84\) instead of \(10, 84\)"):
        load_weights(model, source.state_dict(), "imagenet.pth")
    notes = load_weights(model, source.state_dict(), "imagenet.pth", replace_head=True)
    assert notes == ["replaced the classifier head fc3 (1000 outputs in imagenet.pth) by a new one for 10 classes"]
    assert torch.equal(model.conv1.weight, source.conv1.weight) and torch.equal(model.fc2.bias, source.fc2.bias)
    assert torch.equal(model.fc3.weight, own_head)


def test_a_state_dict_saved_from_a_wrapper_loads():
    source = Net()
    wrapped = {f"module.{key}": value for key, value in source.state_dict().items()}
    model = Net()
    assert load_weights(model, wrapped, "ddp.pth") == [
        "removed the prefix 'module.' that a training wrapper put on every key"
    ]
    assert torch.equal(model.fc1.weight, source.fc1.weight)


def test_another_architecture_is_named_in_one_short_line():
    big = {f"layer{i}.weight": torch.zeros(2) for i in range(50)}
    with pytest.raises(PretrainedModelError) as error:
        load_weights(Net(), big, "other.pth")
    message = str(error.value)
    assert "missing: conv1.weight, conv1.bias, conv2.weight, ... (10 in all)" in message
    assert "unexpected: layer0.weight, layer1.weight, layer2.weight, ... (50 in all)" in message
    assert "another architecture" in message and len(message) < 400


def test_bytes_and_files_are_read_alike(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(Net().state_dict(), path)
    from_file, from_bytes = read_state_dict(path), state_dict_from_bytes(path.read_bytes(), path)
    assert list(from_file) == list(from_bytes) == NOTEBOOK_KEYS
    assert all(torch.equal(from_file[key], from_bytes[key]) for key in from_file)
    with pytest.raises(ValueError, match="is not a PyTorch state_dict"):
        state_dict_from_bytes(b"junk", "upload", error=ValueError)
