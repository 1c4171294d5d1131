import pytest
import torch
from torchvision import transforms

from image_classifier.normalization import IMAGENET_MEAN, IMAGENET_STD, NOTEBOOK_MEAN, NOTEBOOK_STD, normalize


@pytest.mark.parametrize("mean, std", [(NOTEBOOK_MEAN, NOTEBOOK_STD), (IMAGENET_MEAN, IMAGENET_STD)])
def test_bit_identical_to_torchvisions_to_tensor_and_normalize(mean, std):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 9, 7), dtype=torch.uint8, generator=generator)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    expected = torch.stack([transform(image.permute(1, 2, 0).numpy()) for image in images])
    assert torch.equal(normalize(images, mean, std), expected)


def test_the_default_is_the_notebooks():
    images = torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8)
    assert normalize(images).tolist() == [[[[-1.0, 1.0]]] * 3]
