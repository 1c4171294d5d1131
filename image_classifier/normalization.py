"""The last step between an image's uint8 pixels and a model: float32 (x / 255 - mean) / std, per channel.

Training batches and served requests both go through `normalize`, with the mean and std a run's model spec
records. No torch import here (the tensor's own methods do the work), so torch-free modules can name the
constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The notebook's transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): pixels to [-1, 1].
NOTEBOOK_MEAN = (0.5, 0.5, 0.5)
NOTEBOOK_STD = (0.5, 0.5, 0.5)
# What torchvision's published ImageNet weights were trained with (the values every reference script uses).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(
    images: torch.Tensor, mean: Sequence[float] = NOTEBOOK_MEAN, std: Sequence[float] = NOTEBOOK_STD
) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float32 (x / 255 - mean) / std on the images' device.

    The same operations in the same order as torchvision's ToTensor() then Normalize(mean, std), so the
    values are bit-for-bit theirs (the notebook's, with the default mean and std).
    """
    floats = images.float().div(255)
    return floats.sub(floats.new_tensor(mean).view(-1, 1, 1)).div(floats.new_tensor(std).view(-1, 1, 1))
