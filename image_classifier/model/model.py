"""The notebook's CNN (the PyTorch CIFAR-10 tutorial's `Net`) and loading pretrained weights for it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from image_classifier.errors import PretrainedModelError


class Net(nn.Module):
    """Two conv + pool blocks and three linear layers: 62,006 parameters for 10 classes.

    Layer names are the notebook's, so a state_dict saved by the notebook loads here and vice versa.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model(num_classes: int, device: torch.device) -> Net:
    return Net(num_classes).to(device)


def read_state_dict(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Read a state_dict saved with `torch.save(net.state_dict(), path)`, refusing anything else."""
    if not path.is_file():
        raise PretrainedModelError(f"pretrained model not found: {path}")
    try:
        # weights_only: a .pth is a pickle, and only tensors and plain containers may come out of it.
        state_dict = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedModelError(f"{path} is not a PyTorch state_dict file ({first_line})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise PretrainedModelError(f"{path} does not hold a state_dict (a dict of tensors)")
    return state_dict


def load_weights(model: Net, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Put `state_dict` into `model`, in place; every parameter must be there with the right shape."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise PretrainedModelError(f"{source} does not fit the model: {detail}") from None
