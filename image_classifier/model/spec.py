"""ModelSpec: what it takes to rebuild a run's model and feed it images: architecture, image size,
normalisation and classes.

The trainer records it in run.json as "model_spec"; the predict command, the service, the registries, the
runs command and reproduce all read it back from there with `spec_of_run`. A run written before specs were
recorded has none: it reads as what every such run was, the notebook's `Net` on 32 x 32 images with the
notebook's normalisation, its classes from run.json's "classes" or from metrics.json's per-class accuracies
(written in label order).

No torch here: listings and `--help` read specs without loading it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from image_classifier.errors import ModelSpecError
from image_classifier.normalization import IMAGENET_MEAN, IMAGENET_STD, NOTEBOOK_MEAN, NOTEBOOK_STD

NET = "net"  # the notebook's CNN, the default architecture
SPEC_KEY = "model_spec"  # run.json's key
DEFAULT_IMAGE_SIZE = 32  # CIFAR-10's, and the only size runs had before specs were recorded
# A bound on what a spec may ask for, so that a hand-edited or hostile run.json cannot make a reader build a
# model whose first forward pass needs gigabytes (the notebook's Net at 1024 px already has 123 M weights).
MAX_IMAGE_SIZE = 1024
# torchvision's model names are lower case: resnet18, mobilenet_v3_small, vit_b_16, ...
_ARCHITECTURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    classes: tuple[str, ...]  # in label order: output i of the model is classes[i]
    image_size: int = DEFAULT_IMAGE_SIZE  # the model sees image_size x image_size RGB images
    mean: tuple[float, ...] = NOTEBOOK_MEAN  # per channel (R, G, B), of pixels scaled to [0, 1]
    std: tuple[float, ...] = NOTEBOOK_STD

    def __post_init__(self) -> None:
        check_architecture_name(self.architecture)
        object.__setattr__(self, "classes", checked_classes(self.classes, "the model spec"))
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ModelSpecError(f"the image size must be a whole number, not {self.image_size!r}")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ModelSpecError(f"the image size {self.image_size} is not from 1 to {MAX_IMAGE_SIZE}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not _three_finite_numbers(values) or (name == "std" and min(values) <= 0):
                requirement = "three positive numbers" if name == "std" else "three numbers"
                raise ModelSpecError(f"the normalisation {name} must be {requirement} (R, G, B), not {values!r}")
            object.__setattr__(self, name, tuple(float(value) for value in values))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """The JSON-ready form run.json keeps."""
        return {
            "architecture": self.architecture,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, value: object, source: object = "the model spec") -> ModelSpec:
        """The spec in `value` (run.json's "model_spec"); a ModelSpecError naming `source` if it is not one."""
        if not isinstance(value, Mapping):
            raise ModelSpecError(f"{source}: the model spec is not a JSON object")
        missing = [key for key in ("architecture", "image_size", "mean", "std", "classes") if key not in value]
        if missing:
            raise ModelSpecError(f"{source}: the model spec lacks {', '.join(missing)}")
        try:
            return cls(
                architecture=value["architecture"],
                classes=value["classes"],
                image_size=value["image_size"],
                mean=value["mean"],
                std=value["std"],
            )
        except ModelSpecError as exc:
            raise ModelSpecError(f"{source}: {exc}") from None


def default_normalization(architecture: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a new run of `architecture` uses: the notebook's for `net` (its results stay bit for bit),
    ImageNet's for torchvision's models, so that their published ImageNet weights see what they were trained on."""
    return (NOTEBOOK_MEAN, NOTEBOOK_STD) if architecture == NET else (IMAGENET_MEAN, IMAGENET_STD)


def new_spec(architecture: str, image_size: int, classes: Sequence[str]) -> ModelSpec:
    """The spec of a new run: `architecture` with its default normalisation."""
    mean, std = default_normalization(architecture)
    return ModelSpec(architecture=architecture, classes=tuple(classes), image_size=image_size, mean=mean, std=std)


def spec_of_run(manifest: Mapping, metrics: Mapping | None = None, source: object = "run.json") -> ModelSpec:
    """The spec of a run from its run.json (`manifest`) and metrics.json (`metrics`, for older runs' classes).

    A run without "model_spec" (written by a version that did not record specs) is the notebook's Net at 32 x 32.
    Raises ModelSpecError when neither the spec nor, for an older run, the class names can be read.
    """
    if manifest.get(SPEC_KEY) is not None:
        return ModelSpec.from_dict(manifest[SPEC_KEY], source)
    classes = older_run_classes(manifest, metrics)
    if classes is None:
        raise ModelSpecError(f"{source} names neither a model spec nor the classes")
    return ModelSpec(architecture=NET, classes=checked_classes(classes, source))


def older_run_classes(manifest: Mapping, metrics: Mapping | None) -> Sequence[str] | None:
    """The classes of a run without a spec: run.json's "classes", else metrics.json's per-class keys."""
    if manifest.get("classes") is not None:
        return manifest["classes"]
    class_accuracy = (metrics or {}).get("class_accuracy")
    # The trainer writes class_accuracy in label order, and JSON keeps the order of keys.
    return list(class_accuracy) if isinstance(class_accuracy, Mapping) else None


def check_architecture_name(name: object) -> None:
    """The form of an architecture's name (whether it exists is `architectures.check_architecture`'s job)."""
    if not isinstance(name, str) or not _ARCHITECTURE_NAME.fullmatch(name):
        raise ModelSpecError(
            f"invalid architecture name {name!r}: {NET}, or a torchvision model's name (lower case letters, "
            "digits and _, such as resnet18)"
        )


def checked_classes(classes: object, source: object) -> tuple[str, ...]:
    if (
        isinstance(classes, (str, bytes))
        or not isinstance(classes, Sequence)
        or len(classes) < 2
        or not all(isinstance(name, str) and name for name in classes)
    ):
        raise ModelSpecError(f"{source}: the classes must be a list of at least two non-empty names")
    if len(set(classes)) != len(classes):
        raise ModelSpecError(f"{source}: class names must be unique")
    unusable = [name for name in classes if any(unicodedata.category(char) in ("Cc", "Cs") for char in name)]
    if unusable:
        # A lone surrogate (a folder name's bytes that were not UTF-8) fails every UTF-8 answer of the
        # service that names the class; a control character forges lines in logs, tables and CSV.
        raise ModelSpecError(
            f"{source}: class names must be UTF-8 text without control characters, not "
            + ", ".join(repr(name) for name in unusable)
        )
    return tuple(classes)


def _three_finite_numbers(values: object) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, (str, bytes))
        and len(values) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )
