"""Find a model (run folder, model.pth or models:/ URI), check it, load it, and name its classes.

Class names, in label order, come from, first to last: the run's `run.json` ("classes"), the key order of its
`metrics.json` "class_accuracy"; for a bare model.pth, `--classes`, `--metadata FILE` or a `metadata.json`
beside it. Classes given explicitly for a run that names its own must agree with them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from image_classifier.data.batches import preprocess
from image_classifier.model.model import Net, load_weights
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
    classes: tuple[str, ...]
    registry_name: str | None = None
    registry_version: int | None = None
    aliases: tuple[str, ...] = ()
    source_run: str | None = None
    registered_at: str | None = None
    test_accuracy: float | None = None
    class_accuracy: dict | None = None


@dataclass(frozen=True)
class ServedModel:
    net: Net
    info: ModelInfo

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x 3 x 32 x 32 -> float32 N x classes, softmax of the logits, via the training normalisation."""
        with torch.inference_mode():
            logits = self.net(preprocess(torch.from_numpy(images)))
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
    classes = _classes(request, located, run, metrics)
    net = _build_net(payload, located.model_path, classes)
    info = _info(request, located, sha256, classes, run, metrics)
    logger.info("loaded %s (sha256 %s, %d classes)", request.model, sha256[:12], len(classes))
    return ServedModel(net=net, info=info)


def top_k(probabilities: np.ndarray, classes: tuple[str, ...], k: int) -> list[dict]:
    """The k most probable classes, most probable first (ties in label order)."""
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(classes))]
    return [{"class": classes[i], "label": int(i), "probability": float(probabilities[i])} for i in order]


# --- finding the files -----------------------------------------------------------------------------------


def _locate(request: ModelRequest) -> _Located:
    if registry_client.is_model_uri(request.model):
        version = registry_client.resolve(request.model, request.experiments_folder, request.tracking_uri)
        return _Located(model_path=Path(version.model_path), run_dir=version.run_dir, version=version)
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


# --- class names -----------------------------------------------------------------------------------------


def _classes(request: ModelRequest, located: _Located, run: dict | None, metrics: dict | None) -> tuple[str, ...]:
    recorded = _recorded_classes(located, run, metrics)
    given = _given_classes(request, located)
    if recorded and given and recorded != given:
        raise ModelSourceError(
            f"the classes given ({', '.join(given)}) differ from those the run recorded ({', '.join(recorded)})"
        )
    classes = recorded or given
    if not classes:
        raise ModelSourceError(
            f"no class names for {located.model_path}: pass --classes a,b,c or --metadata FILE, or put a "
            f'{METADATA_FILE} ({{"classes": [...]}}) beside it'
        )
    return classes


def _recorded_classes(located: _Located, run: dict | None, metrics: dict | None) -> tuple[str, ...] | None:
    if run and run.get("classes") is not None:
        return _checked_classes(run["classes"], located.run_dir / RUN_FILE)
    if metrics and isinstance(metrics.get("class_accuracy"), dict):
        # The trainer writes class_accuracy in label order (metadata.json order), and JSON keeps key order.
        return _checked_classes(list(metrics["class_accuracy"]), located.run_dir / METRICS_FILE)
    return None


def _given_classes(request: ModelRequest, located: _Located) -> tuple[str, ...] | None:
    if request.classes is not None:
        return _checked_classes(list(request.classes), "--classes")
    metadata = request.metadata
    if metadata is None and (located.model_path.parent / METADATA_FILE).is_file():
        metadata = located.model_path.parent / METADATA_FILE
    if metadata is None:
        return None
    document = _read_json(metadata)
    if document is None:
        raise ModelSourceError(f"{metadata} not found")
    return _checked_classes(document.get("classes"), metadata)


def _checked_classes(classes: object, source: object) -> tuple[str, ...]:
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise ModelSourceError(f"{source}: the classes must be a list of at least two non-empty names")
    if len(set(classes)) != len(classes):
        raise ModelSourceError(f"{source}: class names must be unique")
    return tuple(classes)


# --- the network -----------------------------------------------------------------------------------------


def _build_net(payload: bytes, path: Path, classes: tuple[str, ...]) -> Net:
    state_dict = _state_dict(payload, path)
    outputs = state_dict.get("fc3.weight")
    if outputs is not None and outputs.ndim == 2 and outputs.shape[0] != len(classes):
        raise ModelSourceError(f"{path} has {outputs.shape[0]} outputs, but {len(classes)} classes are named")
    net = Net(len(classes))
    load_weights(net, state_dict, path)
    net.eval()
    _check_outputs(net, path)
    return net


def _state_dict(payload: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: a .pth is a pickle, and only tensors and plain containers may come out of it.
        state_dict = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"{path} is not a PyTorch state_dict file ({detail})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelSourceError(f"{path} does not hold a state_dict (a dict of tensors)")
    return state_dict


def _check_outputs(net: Net, path: Path) -> None:
    """Weights that load but compute NaN or infinity (a diverged run) must not serve."""
    with torch.inference_mode():
        logits = net(preprocess(torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)))
    if not torch.isfinite(logits).all():
        raise ModelSourceError(f"{path} computes non-finite outputs (NaN or infinity): refusing to serve it")


def _info(
    request: ModelRequest,
    located: _Located,
    sha256: str,
    classes: tuple[str, ...],
    run: dict | None,
    metrics: dict | None,
) -> ModelInfo:
    version = located.version
    test_accuracy = (metrics or {}).get("test_accuracy")
    if version is not None and getattr(version, "test_accuracy", None) is not None:
        test_accuracy = version.test_accuracy
    return ModelInfo(
        source=request.model,
        model_path=str(located.model_path),
        sha256=sha256,
        classes=classes,
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
