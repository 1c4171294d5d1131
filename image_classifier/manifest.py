"""run.json's record of the environment a run ran in, and how two such records compare (no torch here)."""

from __future__ import annotations

# The keys of run.json that describe where a run's bytes came from besides data and arguments; each resume
# records the same keys again under "resumes".
ENVIRONMENT_KEYS = ("device", "gpu", "code", "versions", "platform", "git", "lock_files")


def start_environment(manifest: dict) -> dict:
    """The environment a run started in (run.json keeps it as top-level keys)."""
    return {key: manifest.get(key) for key in ENVIRONMENT_KEYS}


def last_environment(manifest: dict) -> dict:
    """The environment that wrote the run's latest checkpoint: its last resume's, else its start's."""
    resumes = manifest.get("resumes") or []
    return resumes[-1]["environment"] if resumes else start_environment(manifest)


def flatten(value: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat.update(flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def differences(before: dict, after: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for every (flattened) key whose value differs, except those in `ignore`."""
    before, after = flatten(before), flatten(after)
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key) and key not in ignore
    ]
