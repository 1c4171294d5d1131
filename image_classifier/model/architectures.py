"""Models by name: `net` (the notebook's CNN) and torchvision's classification models, built from a ModelSpec.

torchvision is imported only when one of its models is asked for: training, predicting with or serving the
notebook's `net` never pays for loading it. Nothing is ever downloaded: models are built with `weights=None`
and start from the seeded random initialisation, or from a state_dict the user gives (`load_pretrained`),
torchvision's published ImageNet weights included.
"""

from __future__ import annotations

import copy
import difflib
import logging

import torch
from torch import nn

from image_classifier.errors import ModelSpecError, PretrainedModelError, UserError
from image_classifier.model.model import Net, load_weights
from image_classifier.model.spec import NET, ModelSpec

logger = logging.getLogger(__name__)

# Builder arguments some torchvision models need here. GoogLeNet and Inception v3 return their auxiliary
# classifiers' logits too while training, which a plain classification step does not use: built without
# them. init_weights=True is what torchvision does when it is not given (and it warns that it may change).
_BUILDER_ARGUMENTS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
# The auxiliary classifiers' weights in torchvision's published files for those two: not part of our models.
_AUXILIARY_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def torchvision_architectures() -> list[str]:
    """torchvision's classification models (not its detection, segmentation, video or quantized ones)."""
    from torchvision import models  # about 1.5 s to import: only when a torchvision model is asked for

    return models.list_models(module=models)


def available_architectures() -> list[str]:
    return [NET, *torchvision_architectures()]


def check_architecture(name: str) -> None:
    """Refuse an architecture that neither `net` nor torchvision's classification models name."""
    if name == NET:
        return
    known = available_architectures()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ModelSpecError(f"unknown architecture {name!r}{hint}; the architectures are: {', '.join(known)}")


def build_model(spec: ModelSpec) -> nn.Module:
    """The spec's model on the CPU, in training mode, newly initialised from torch's global generator.

    Checked with one image of the spec's size: a model that cannot take it (Inception v3 below 75 x 75 pixels,
    `net` below 16 x 16) is a ModelSpecError here, not an error in the middle of a run.
    """
    if spec.architecture == NET:
        model = Net(spec.num_classes, spec.image_size)
    else:
        check_architecture(spec.architecture)
        model = _torchvision_model(spec)
    _check_input_size(model, spec)
    return model


def _torchvision_model(spec: ModelSpec) -> nn.Module:
    from torchvision import models

    arguments = dict(_BUILDER_ARGUMENTS.get(spec.architecture, {}))
    # Vision transformers are built for one input size (224 by default): built for the spec's.
    if spec.architecture.startswith("vit_"):
        arguments["image_size"] = spec.image_size
    elif spec.architecture.startswith("maxvit_"):
        arguments["input_size"] = (spec.image_size, spec.image_size)
    try:
        return models.get_model(spec.architecture, weights=None, num_classes=spec.num_classes, **arguments)
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise ModelSpecError(f"{_describe(spec)} cannot be built: {_first_line(exc)}") from None


def _check_input_size(model: nn.Module, spec: ModelSpec) -> None:
    was_training = model.training
    model.eval()  # no batch statistics are updated, no dropout draws from the generators
    try:
        with torch.no_grad():
            outputs = model(torch.zeros(1, 3, spec.image_size, spec.image_size))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        raise ModelSpecError(
            f"{spec.architecture} cannot take {spec.image_size} x {spec.image_size} images ({_first_line(exc)}); "
            "choose a larger --image_size or another architecture"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != (1, spec.num_classes):
        raise ModelSpecError(f"{spec.architecture} does not answer one logit per class for an image")


def check_trains_on_one_image(model: nn.Module, spec: ModelSpec) -> None:
    """Refuse, before training, a model that cannot take a training step on a batch of one image.

    Batch norm needs two values per channel: ResNets at 32 x 32 end in 1 x 1 feature maps, so an epoch whose
    last batch holds one image would fail at its very end. The trainer asks only when that batch will come.
    The check runs on a copy, with the random generators put back: the run's bytes do not depend on it.
    """
    probe = copy.deepcopy(model).cpu().train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            probe(torch.zeros(1, 3, spec.image_size, spec.image_size))
        except ValueError as exc:
            raise ModelSpecError(
                f"{spec.architecture} cannot train on a batch of one image at {spec.image_size} x {spec.image_size} "
                f"({_first_line(exc)}), and the last batch of every epoch would hold one: choose another "
                "--batch_size"
            ) from None


def check_deterministic_kernels(model: nn.Module, spec: ModelSpec, device: torch.device) -> None:
    """Refuse, before training, a model with no deterministic kernel for some step on `device`.

    Under `torch.use_deterministic_algorithms(True)` such a kernel raises when first called: on CUDA the
    backward passes of adaptive average pooling (every ResNet, EfficientNet, MobileNet...) and of bilinear
    interpolation have none. One training step on a copy finds out (the generators are put back afterwards).
    """
    probe = copy.deepcopy(model).to(device).train()
    forked = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=forked):
        try:
            probe(torch.zeros(2, 3, spec.image_size, spec.image_size, device=device)).sum().backward()
        except RuntimeError as exc:
            if "deterministic" not in str(exc):
                raise
            raise ModelSpecError(
                f"{spec.architecture} needs a kernel that has no deterministic version on {device} "
                f"({_first_line(exc)}): train it with --no-deterministic (its repeats are then not byte-identical), "
                "or on the CPU"
            ) from None


def load_pretrained(model: nn.Module, spec: ModelSpec, state_dict: dict[str, torch.Tensor], source: object) -> None:
    """Start `model` from `state_dict`, a run's weights or torchvision's published ImageNet weights.

    A classifier head of another class count (ImageNet's 1000, or another run's classes) is replaced by the
    model's own new one; that, and the auxiliary classifiers left out, is said in the log.
    """
    auxiliary = _AUXILIARY_PREFIXES.get(spec.architecture, ())
    dropped = [key for key in state_dict if key.startswith(auxiliary)] if auxiliary else []
    if dropped:
        state_dict = {key: value for key, value in state_dict.items() if key not in dropped}
    notes = load_weights(model, state_dict, f"{source} ({_describe(spec)})", replace_head=True)
    if dropped:
        notes.append(f"left out {len(dropped)} tensors of the auxiliary classifiers, which the model does not have")
    for note in notes:
        logger.info("pretrained model: %s", note)


def load_trained(
    model: nn.Module,
    spec: ModelSpec,
    state_dict: dict[str, torch.Tensor],
    source: object,
    error: type[UserError] = PretrainedModelError,
) -> None:
    """Put a trained run's weights into `model`: they must fit exactly (the head included)."""
    load_weights(model, state_dict, f"{source} ({_describe(spec)})", error=error)


def _describe(spec: ModelSpec) -> str:
    return f"{spec.architecture} for {spec.num_classes} classes at {spec.image_size} x {spec.image_size}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
