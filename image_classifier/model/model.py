"""The notebook's CNN (the PyTorch CIFAR-10 tutorial's `Net`), and the one way weights are read and loaded."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import nn

from image_classifier.errors import ModelSpecError, PretrainedModelError, UserError

# Net's two 5 x 5 convolutions (no padding) and two 2 x 2 poolings leave at least 1 x 1 from 16 x 16 up.
NET_MIN_IMAGE_SIZE = 16
# Wrappers whose saved state_dicts prefix every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def net_feature_side(image_size: int) -> int:
    """The side of Net's last feature map for image_size x image_size inputs: 5 for CIFAR-10's 32."""
    return ((image_size - 4) // 2 - 4) // 2


class Net(nn.Module):
    """Two conv + pool blocks and three linear layers: 62,006 parameters for 10 classes at 32 x 32.

    Layer names are the notebook's, so a state_dict saved by the notebook loads here and vice versa. Other
    image sizes (16 and up) change only the input width of fc1 (16 x side x side instead of 16 x 5 x 5);
    layers are created in the same order, so at 32 x 32 the weights are the notebook's bit for bit.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        if image_size < NET_MIN_IMAGE_SIZE:
            raise ModelSpecError(
                f"net needs images of at least {NET_MIN_IMAGE_SIZE} x {NET_MIN_IMAGE_SIZE} pixels (its two 5 x 5 "
                f"convolutions and two poolings leave nothing of {image_size} x {image_size})"
            )
        side = net_feature_side(image_size)
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# --- reading weights -------------------------------------------------------------------------------------


def read_state_dict(
    path: Path, device: torch.device | str = "cpu", error: type[UserError] = PretrainedModelError
) -> dict[str, torch.Tensor]:
    """Read a state_dict saved with `torch.save(model.state_dict(), path)`, refusing anything else."""
    if not path.is_file():
        raise error(f"pretrained model not found: {path}")
    with path.open("rb") as stream:
        return _load(stream, path, device, error)


def state_dict_from_bytes(
    payload: bytes, source: object, device: torch.device | str = "cpu", error: type[UserError] = PretrainedModelError
) -> dict[str, torch.Tensor]:
    """The same, from a file's bytes already read (and hashed) by the caller."""
    return _load(io.BytesIO(payload), source, device, error)


def _load(stream: BinaryIO, source: object, device, error: type[UserError]) -> dict[str, torch.Tensor]:
    try:
        # weights_only: a .pth is a pickle, and only tensors and plain containers may come out of it.
        state_dict = torch.load(stream, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{source} is not a PyTorch state_dict file ({first_line})") from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise error(f"{source} does not hold a state_dict (a dict of tensors)")
    return state_dict


# --- loading weights into a model -----------------------------------------------------------------------


def classifier_head(model: nn.Module) -> str:
    """The name of the model's final layer: the module that owns its last parameter (`fc3` for Net, `fc` for
    ResNets, `classifier.3` for MobileNetV3, `heads.head` for ViTs: every torchvision classifier ends so)."""
    name, _ = list(model.named_parameters())[-1]
    return name.rpartition(".")[0]


def load_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: object,
    replace_head: bool = False,
    error: type[UserError] = PretrainedModelError,
) -> list[str]:
    """Put `state_dict` into `model`, in place: every tensor must be there, with the model's shape.

    `replace_head`: where only the final layer's shape differs (ImageNet's 1000 classes for a model of 10),
    keep the model's own newly initialised final layer instead. Returns what was adapted, for the log.
    """
    notes = []
    state_dict, stripped = _without_wrapper_prefix(state_dict, model)
    if stripped:
        notes.append(f"removed the prefix {stripped!r} that a training wrapper put on every key")
    expected = model.state_dict()
    if replace_head:
        head = classifier_head(model)
        head_keys = [key for key in expected if key.startswith(head + ".")]
        if any(key in state_dict and state_dict[key].shape != expected[key].shape for key in head_keys):
            outputs = state_dict.get(f"{head}.weight")
            had = f"{outputs.shape[0]} outputs" if outputs is not None and outputs.ndim else "another shape"
            state_dict = {**state_dict, **{key: expected[key] for key in head_keys}}
            notes.append(
                f"replaced the classifier head {head} ({had} in {source}) by a new one for "
                f"{expected[head_keys[0]].shape[0]} classes"
            )
    problems = _fit_problems(state_dict, expected)
    if problems:
        raise error(f"{source} does not fit the model: {problems}")
    model.load_state_dict(state_dict)
    return notes


def _without_wrapper_prefix(state_dict: dict, model: nn.Module) -> tuple[dict, str | None]:
    own = set(model.state_dict())
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict) and not own & set(state_dict):
            return {key[len(prefix) :]: value for key, value in state_dict.items()}, prefix
    return state_dict, None


def _fit_problems(given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """What keeps `given` from loading into a model with `expected`, in one line ('' when it fits)."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    mismatched = [
        f"{key} {tuple(given[key].shape)} instead of {tuple(value.shape)}"
        for key, value in expected.items()
        if key in given and given[key].shape != value.shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
        if items:
            shown = ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")
            parts.append(f"{label}: {shown}")
    if parts and (missing or unexpected):
        parts.append("was it saved from another architecture?")
    return "; ".join(parts)
