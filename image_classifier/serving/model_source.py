"""Find a model (run folder, model.pth or models:/ URI), check it, build it from its spec and load it.

The model spec (architecture, image size, normalisation, classes) comes from the run's `run.json`
("model_spec"); a run of an earlier version, which has none, is the notebook's Net at 32 x 32, its classes in
label order from run.json's "classes" or the key order of its metrics.json "class_accuracy". A registered
version's run.json lies beside its model.pth (in its run folder, or downloaded from MLflow with it).

For a bare model.pth the classes come from `--classes`, `--metadata FILE` or a `metadata.json` beside it; that
JSON file may also name "architecture", "image_size", "mean" and "std" (else: the notebook's Net at 32 x 32),
or be a run's run.json. Classes given explicitly for a run that names its own must agree with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from image_classifier.errors import ModelSpecError
from image_classifier.model.architectures import build_model, load_trained
from image_classifier.model.model import classifier_head, state_dict_from_bytes
from image_classifier.model.spec import (
    DEFAULT_IMAGE_SIZE,
    NET,
    SPEC_KEY,
    ModelSpec,
    checked_classes,
    default_normalization,
    older_run_classes,
    spec_of_run,
)
from image_classifier.normalization import normalize
from image_classifier.serving import registry_client
from image_classifier.serving.errors import ModelSourceError
from image_classifier.serving.model_request import ModelRequest

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pth"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ModelInfo:
    """Where the served weights came from; shown by /metadata and with every prediction."""

    source: str
    model_path: str
    sha256: str
    spec: ModelSpec  # architecture, image size, normalisation and classes
    registry_name: str | None = None
    registry_version: int | None = None
    aliases: tuple[str, ...] = ()
    source_run: str | None = None
    registered_at: str | None = None
    test_accuracy: float | None = None
    class_accuracy: dict | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes


@dataclass(frozen=True)
class ServedModel:
    net: nn.Module
    info: ModelInfo

    @property
    def spec(self) -> ModelSpec:
        return self.info.spec

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def image_size(self) -> int:
        """The side of the images the model takes: `images.decode_image(..., image_size=...)` makes them."""
        return self.spec.image_size

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x 3 x S x S -> float32 N x classes, softmax of the logits, via the training normalisation."""
        with torch.inference_mode():
            logits = self.net(normalize(torch.from_numpy(images), self.spec.mean, self.spec.std))
            return torch.softmax(logits, dim=1).numpy()


@dataclass(frozen=True)
class _Located:
    model_path: Path
    run_dir: Path | None
    version: object | None  # the registry's ModelVersion, for models:/ URIs


def load_model(request: ModelRequest) -> ServedModel:
    located = _locate(request)
    payload = _read(located.model_path)
    sha256 = hashlib.sha256(payload).hexdigest()
    run = _read_json(located.run_dir / RUN_FILE) if located.run_dir else None
    metrics = _read_json(located.run_dir / METRICS_FILE) if located.run_dir else None
    _check_recorded_hash(located, run, sha256)
    spec = _spec(request, located, run, metrics)
    net = _build_net(payload, located.model_path, spec)
    info = _info(request, located, sha256, spec, metrics)
    logger.info(
        "loaded %s (sha256 %s: %s, %d classes, %d x %d images)",
        request.model,
        sha256[:12],
        spec.architecture,
        spec.num_classes,
        spec.image_size,
        spec.image_size,
    )
    return ServedModel(net=net, info=info)


def top_k(probabilities: np.ndarray, classes: tuple[str, ...], k: int) -> list[dict]:
    """The k most probable classes, most probable first (ties in label order)."""
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(classes))]
    return [{"class": classes[i], "label": int(i), "probability": float(probabilities[i])} for i in order]


# --- finding the files -----------------------------------------------------------------------------------


def _locate(request: ModelRequest) -> _Located:
    if registry_client.is_model_uri(request.model):
        version = registry_client.resolve(request.model, request.experiments_folder, request.tracking_uri)
        model_path = Path(version.model_path)
        # The run's record lies beside the weights: in the run folder, or downloaded from MLflow with them.
        run_dir = version.run_dir or (model_path.parent if (model_path.parent / RUN_FILE).is_file() else None)
        return _Located(model_path=model_path, run_dir=run_dir, version=version)
    path = Path(request.model)
    if path.is_dir():
        return _Located(model_path=path / MODEL_FILE, run_dir=path, version=None)
    if path.is_file():
        return _Located(model_path=path, run_dir=None, version=None)
    raise ModelSourceError(
        f"no model at {request.model}: give a run folder, a model.pth file, models:/NAME/VERSION or models:/NAME@ALIAS"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelSourceError(f"{path} not found") from None
    except OSError as exc:
        raise ModelSourceError(f"cannot read {path}: {exc.strerror}") from None


def _read_json(path: Path) -> dict | None:
    """A run file's contents, or None when the run lacks it; a file that is not a JSON object is an error."""
    if not path.is_file():
        return None
    try:
        document = json.loads(_read(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ModelSourceError(f"{path} does not hold a JSON object")
    return document


def _check_recorded_hash(located: _Located, run: dict | None, sha256: str) -> None:
    recorded = (run or {}).get("model_sha256")
    if recorded and recorded != sha256:
        raise ModelSourceError(
            f"{located.model_path} changed since its run recorded it: sha256 {sha256[:12]}..., "
            f"run.json says {str(recorded)[:12]}..."
        )


# --- the model spec -------------------------------------------------------------------------------------


def _spec(request: ModelRequest, located: _Located, run: dict | None, metrics: dict | None) -> ModelSpec:
    recorded = _recorded_spec(located, run, metrics)
    given = _given_spec(request, located)
    if recorded and given and recorded.classes != given.classes:
        raise ModelSourceError(
            f"the classes given ({', '.join(given.classes)}) differ from those the run recorded "
            f"({', '.join(recorded.classes)})"
        )
    spec = recorded or given
    if spec is None:
        raise ModelSourceError(
            f"no class names for {located.model_path}: pass --classes a,b,c or --metadata FILE, or put a "
            f'{METADATA_FILE} ({{"classes": [...]}}) beside it'
        )
    return spec


def _recorded_spec(located: _Located, run: dict | None, metrics: dict | None) -> ModelSpec | None:
    """The run's spec: recorded in run.json, or, for a run of an earlier version, its Net at 32 x 32."""
    if located.run_dir is None:
        return None
    run = run or {}
    if run.get(SPEC_KEY) is None and older_run_classes(run, metrics) is None:
        return None
    source = located.run_dir / (RUN_FILE if run.get(SPEC_KEY) or run.get("classes") else METRICS_FILE)
    return _checked(lambda: spec_of_run(run, metrics, source))


def _given_spec(request: ModelRequest, located: _Located) -> ModelSpec | None:
    """The spec named with --classes (the notebook's Net at 32 x 32), or by a metadata file."""
    if request.classes is not None:
        return _checked(lambda: ModelSpec(architecture=NET, classes=checked_classes(request.classes, "--classes")))
    metadata = request.metadata
    if metadata is None and (located.model_path.parent / METADATA_FILE).is_file():
        metadata = located.model_path.parent / METADATA_FILE
    if metadata is None:
        return None
    document = _read_json(metadata)
    if document is None:
        raise ModelSourceError(f"{metadata} not found")
    if document.get(SPEC_KEY) is not None:  # a run's run.json
        return _checked(lambda: spec_of_run(document, None, metadata))
    return _checked(lambda: _spec_of_metadata(document, metadata))


def _spec_of_metadata(document: dict, source: Path) -> ModelSpec:
    """A bare model.pth's spec: what its metadata file names, the rest as for the notebook's Net at 32 x 32
    (and the architecture's default normalisation)."""
    classes = checked_classes(document.get("classes"), source)
    architecture = document.get("architecture", NET)
    mean, std = default_normalization(architecture)
    try:
        return ModelSpec(
            architecture=architecture,
            classes=classes,
            image_size=document.get("image_size", DEFAULT_IMAGE_SIZE),
            mean=document.get("mean", mean),
            std=document.get("std", std),
        )
    except ModelSpecError as exc:
        raise ModelSpecError(f"{source}: {exc}") from None


def _checked(make):
    """`make()`, its ModelSpecError told as the serving error it is here."""
    try:
        return make()
    except ModelSpecError as exc:
        raise ModelSourceError(str(exc)) from None


# --- the network -----------------------------------------------------------------------------------------


def _build_net(payload: bytes, path: Path, spec: ModelSpec) -> nn.Module:
    state_dict = state_dict_from_bytes(payload, path, error=ModelSourceError)
    net = _checked(lambda: build_model(spec))
    head = classifier_head(net)
    outputs = state_dict.get(f"{head}.weight")
    if outputs is not None and outputs.ndim >= 2 and outputs.shape[0] != spec.num_classes:
        raise ModelSourceError(f"{path} has {outputs.shape[0]} outputs, but {spec.num_classes} classes are named")
    load_trained(net, spec, state_dict, path, error=ModelSourceError)
    net.eval()
    _check_outputs(net, spec, path)
    return net


def _check_outputs(net: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Weights that load but compute NaN or infinity (a diverged run) must not serve."""
    with torch.inference_mode():
        images = torch.full((2, 3, spec.image_size, spec.image_size), 128, dtype=torch.uint8)
        logits = net(normalize(images, spec.mean, spec.std))
    if not torch.isfinite(logits).all():
        raise ModelSourceError(f"{path} computes non-finite outputs (NaN or infinity): refusing to serve it")


def _info(request: ModelRequest, located: _Located, sha256: str, spec: ModelSpec, metrics: dict | None) -> ModelInfo:
    version = located.version
    test_accuracy = (metrics or {}).get("test_accuracy")
    if version is not None and getattr(version, "test_accuracy", None) is not None:
        test_accuracy = version.test_accuracy
    return ModelInfo(
        source=request.model,
        model_path=str(located.model_path),
        sha256=sha256,
        spec=spec,
        registry_name=getattr(version, "name", None),
        registry_version=getattr(version, "version", None),
        aliases=tuple(getattr(version, "aliases", ())),
        source_run=getattr(version, "source_run", None) or (str(located.run_dir) if located.run_dir else None),
        registered_at=getattr(version, "registered_at", None),
        test_accuracy=test_accuracy if isinstance(test_accuracy, (int, float)) else None,
        class_accuracy=(
            (metrics or {}).get("class_accuracy") if isinstance((metrics or {}).get("class_accuracy"), dict) else None
        ),
    )
