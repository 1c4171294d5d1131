import logging
import subprocess
import sys

import pytest
import torch

from image_classifier.errors import ModelSpecError, PretrainedModelError
from image_classifier.model.architectures import (
    build_model,
    check_architecture,
    check_deterministic_kernels,
    check_trains_on_one_image,
    load_pretrained,
    load_trained,
    torchvision_architectures,
)
from image_classifier.model.model import Net
from image_classifier.model.spec import new_spec

CLASSES = tuple("abcdefg")  # 7 classes: no torchvision default (1000) and not CIFAR-10's 10


def spec(architecture: str, image_size: int = 32):
    return new_spec(architecture, image_size, CLASSES)


def test_torchvision_classification_models_are_offered_and_nothing_else():
    names = torchvision_architectures()
    assert {"resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16"} <= set(names)
    assert not any(name.startswith(("fasterrcnn", "fcn_", "r3d", "quantized")) for name in names)


def test_an_unknown_architecture_names_the_close_ones():
    with pytest.raises(ModelSpecError, match=r"unknown architecture 'resnet19' \(did you mean resnet18"):
        check_architecture("resnet19")
    check_architecture("net")
    check_architecture("mobilenet_v3_small")


@pytest.mark.parametrize("architecture", ["net", "resnet18", "mobilenet_v3_small", "squeezenet1_1"])
def test_models_answer_one_logit_per_class_in_training_and_evaluation(architecture):
    torch.manual_seed(0)
    model = build_model(spec(architecture))
    assert model.training
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    model.eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_the_same_seed_builds_the_same_weights():
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        states.append(build_model(spec("resnet18")).state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_net_is_the_notebooks_net():
    torch.manual_seed(0)
    built = build_model(spec("net"))
    torch.manual_seed(0)
    assert type(built) is Net
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), Net(7).state_dict().values()))


def test_vision_transformers_are_built_for_the_spec_s_image_size():
    model = build_model(spec("vit_b_32", 64))
    assert model.image_size == 64


@pytest.mark.parametrize("architecture, size", [("inception_v3", 32), ("alexnet", 32), ("net", 8)])
def test_a_model_that_cannot_take_the_image_size_is_refused_when_built(architecture, size):
    with pytest.raises(ModelSpecError, match=f"{size} x {size}"):
        build_model(spec(architecture, size))


def test_building_a_model_draws_nothing_but_its_weights_from_the_generator():
    """The input-size probe runs in evaluation mode: dropout draws nothing, batch norm learns nothing."""
    torch.manual_seed(5)
    model = build_model(spec("mobilenet_v3_small"))
    after_build = torch.get_rng_state()
    from torchvision.models import get_model

    torch.manual_seed(5)
    bare = get_model("mobilenet_v3_small", weights=None, num_classes=7)
    assert torch.equal(torch.get_rng_state(), after_build)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bare.state_dict().values()))


def test_a_model_that_cannot_train_on_one_image_is_refused_and_the_generators_are_untouched():
    torch.manual_seed(0)
    resnet = build_model(spec("resnet18"))  # its last feature maps are 1 x 1 at 32 x 32: batch norm needs two
    before = torch.get_rng_state()
    with pytest.raises(ModelSpecError, match="cannot train on a batch of one image at 32 x 32.*--batch_size"):
        check_trains_on_one_image(resnet, spec("resnet18"))
    assert torch.equal(torch.get_rng_state(), before)
    assert int(resnet.bn1.num_batches_tracked) == 0  # the check ran on a copy
    check_trains_on_one_image(build_model(spec("net")), spec("net"))
    check_trains_on_one_image(build_model(spec("resnet18", 64)), spec("resnet18", 64))


def test_imagenet_weights_start_a_model_of_another_class_count_with_a_new_head(caplog):
    torch.manual_seed(0)
    imagenet = build_model(new_spec("resnet18", 32, [str(i) for i in range(1000)])).state_dict()
    torch.manual_seed(1)
    model = build_model(spec("resnet18"))
    new_head = model.fc.weight.clone()
    with caplog.at_level(logging.INFO):
        load_pretrained(model, spec("resnet18"), imagenet, "resnet18-f37072fd.pth")
    assert torch.equal(model.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, imagenet["bn1.running_var"])
    assert torch.equal(model.fc.weight, new_head)
    assert "replaced the classifier head fc (1000 outputs in resnet18-f37072fd.pth" in caplog.text
    assert "by a new one for 7 classes" in caplog.text

    # A trained run's weights must fit exactly: the head is never replaced there.
    with pytest.raises(PretrainedModelError, match=r"fc.weight \(1000, 512\) instead of \(7, 512\)"):
        load_trained(model, spec("resnet18"), imagenet, "model.pth")


def test_googlenets_published_auxiliary_classifiers_are_left_out(caplog):
    from torchvision.models import googlenet

    published = googlenet(weights=None, aux_logits=True, init_weights=True, num_classes=1000).state_dict()
    model = build_model(spec("googlenet"))
    with caplog.at_level(logging.INFO):
        load_pretrained(model, spec("googlenet"), published, "googlenet.pth")
    assert "left out" in caplog.text and "auxiliary classifiers" in caplog.text
    assert torch.equal(model.inception5b.branch1.conv.weight, published["inception5b.branch1.conv.weight"])
    assert model.training and model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)  # logits only, no auxiliary ones


def test_weights_of_another_architecture_are_a_short_clear_error():
    with pytest.raises(PretrainedModelError, match="was it saved from another architecture") as error:
        load_pretrained(build_model(spec("resnet18")), spec("resnet18"), Net(7).state_dict(), "net.pth")
    assert "net.pth (resnet18 for 7 classes at 32 x 32) does not fit the model" in str(error.value)
    assert len(str(error.value)) < 500


def test_net_never_imports_torchvision():
    probe = (
        "import sys\n"
        "import torch\n"
        "from image_classifier.model.architectures import build_model, check_architecture\n"
        "from image_classifier.model.spec import new_spec\n"
        "check_architecture('net')\n"
        "build_model(new_spec('net', 32, ['a', 'b']))\n"
        "assert not [m for m in sys.modules if m.startswith('torchvision')], 'torchvision was imported'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=600)


class _Unpooling(torch.nn.Module):
    """A model with MaxUnpool2d, which has no deterministic kernel even on the CPU (as adaptive average
    pooling's backward has none on CUDA): the check is tried here without a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.MaxPool2d(2, return_indices=True)
        self.unpool = torch.nn.MaxUnpool2d(2)
        self.fc = torch.nn.Linear(3 * 4 * 4, 7)

    def forward(self, x):
        x = self.unpool(*self.pool(x))
        return self.fc(torch.flatten(x, 1))


def test_a_model_without_deterministic_kernels_is_refused_before_training():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(ModelSpecError, match="no deterministic version on cpu.*--no-deterministic"):
            check_deterministic_kernels(_Unpooling(), spec("unpooling", 4), torch.device("cpu"))
        resnet = build_model(spec("resnet18"))
        before = torch.get_rng_state()
        check_deterministic_kernels(resnet, spec("resnet18"), torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), before) and resnet.fc.weight.grad is None
    finally:
        torch.use_deterministic_algorithms(previous)
