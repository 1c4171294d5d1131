"""How a re-run is compared with the run it reproduces: the weights, the metrics, and the environment.

`reproduce.py` re-runs; this says what differs. Nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path

from image_classifier.errors import ModelSpecError, UserError
from image_classifier.manifest import dataset_file_differences, differences, start_environment
from image_classifier.model.spec import SPEC_KEY, spec_of_run

TIMING_FIELDS = ("seconds", "images_per_second")  # wall-clock measurements, different in every run
PREPARED_KEYS = ("folder", "key", "reused")  # where an image folder's decoded copy is, and whether it existed


def _without_timing(metrics: dict) -> dict:
    history = [{k: v for k, v in entry.items() if k not in TIMING_FIELDS} for entry in metrics.get("history", [])]
    return {**metrics, "history": history}


def _as_recorded(metrics: dict, recorded: dict) -> dict:
    """`metrics` cut down to the keys `recorded` has: an older version recorded fewer metrics."""
    history, recorded_history = metrics.get("history", []), recorded.get("history", [])
    entries = [{key: entry.get(key) for key in was} for entry, was in zip(history, recorded_history)]
    cut = {key: metrics.get(key) for key in recorded}
    if "history" in recorded:
        cut["history"] = entries + history[len(recorded_history) :]  # more epochs than recorded: a difference
    return cut


def unrecorded_metrics(recorded: dict, reproduced: dict) -> list[str]:
    """What the re-run measured that the recorded run did not (so it cannot be compared)."""
    in_history = {key for entry in reproduced.get("history", []) for key in entry}
    in_history -= {key for entry in recorded.get("history", []) for key in entry} | set(TIMING_FIELDS)
    return sorted(reproduced.keys() - recorded.keys()) + [f"history.{key}" for key in sorted(in_history)]


def metric_differences(recorded: dict, reproduced: dict) -> list[str]:
    recorded = _without_timing(recorded)
    reproduced = _as_recorded(_without_timing(reproduced), recorded)
    return [
        f"{key}: {recorded.get(key)!r} -> {reproduced.get(key)!r}"
        for key in sorted(recorded.keys() | reproduced.keys())
        if recorded.get(key) != reproduced.get(key)
    ]


def _spec_of(manifest: dict, metrics: dict | None) -> dict | None:
    """The model spec the run was built from (an earlier version's run: the notebook's Net at 32 x 32)."""
    try:
        return spec_of_run(manifest, metrics).to_dict()
    except ModelSpecError:
        return manifest.get(SPEC_KEY)


def environment_differences(
    recorded: dict, reproduced: dict, recorded_metrics: dict | None = None, reproduced_metrics: dict | None = None
) -> list[str]:
    """What besides the code path could explain different bytes, from the two run.json manifests (and the
    metrics, where an earlier version's run keeps its classes)."""
    sections = ("dataset", "determinism", "pretrained_model", "augmentation")
    before = {**start_environment(recorded), **{key: recorded.get(key) for key in sections}}
    after = {**start_environment(reproduced), **{key: reproduced.get(key) for key in sections}}
    before[SPEC_KEY], after[SPEC_KEY] = _spec_of(recorded, recorded_metrics), _spec_of(reproduced, reproduced_metrics)
    # Paths differ with the directory a run is started from, an image folder's prepared copy with the cache it
    # is in, and a re-run starts from the pretrained file itself, not from the registry name that found it:
    # the files' hashes are what count.
    ignore = (
        "dataset.folder",
        "pretrained_model.path",
        "pretrained_model.uri",
        "pretrained_model.version",
        *(f"dataset.prepared.{key}" for key in PREPARED_KEYS),
    )
    changes = differences(before, after, ignore=ignore)
    return changes + dataset_file_differences(recorded.get("dataset_manifest"), reproduced.get("dataset_manifest"))


def _load_weights(path: Path) -> dict | None:
    from image_classifier.model.model import read_state_dict  # torch: only once weights are compared

    try:
        return read_state_dict(path)
    except UserError:  # missing, or not a state_dict (damaged): it cannot hold the same weights
        return None


def same_weights(first: Path, second: Path) -> bool:
    """Whether two model files hold the same tensors bit for bit, whatever their file layout."""
    a, b = _load_weights(first), _load_weights(second)
    if not isinstance(a, dict) or not isinstance(b, dict) or list(a) != list(b):
        return False
    return all(
        a[name].dtype == b[name].dtype
        and a[name].shape == b[name].shape
        and a[name].contiguous().numpy().tobytes() == b[name].contiguous().numpy().tobytes()
        for name in a
    )
