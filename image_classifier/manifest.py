"""run.json's record of the environment a run ran in and of its image folder, and how two such records compare
(no torch here)."""

from __future__ import annotations

from image_classifier.flatten import flatten

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


def differences(before: dict, after: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for every (flattened) key whose value differs, except those in `ignore`."""
    before, after = flatten(before), flatten(after)
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key) and key not in ignore
    ]


def shown_path(path: str) -> str:
    """A file's path for one line of text: as it is, or escaped (Python's ascii()) when it holds a control
    character (a line break would forge lines) or bytes that were not UTF-8 (which a strict UTF-8 output,
    such as stdout under most locales, cannot write)."""
    return path if path.isprintable() else ascii(path)


def dataset_file_differences(before: dict | None, after: dict | None, limit: int = 20) -> list[str]:
    """What changed between two runs' image-folder manifests (run.json's "dataset_manifest"), file by file:
    `changed: <path>` (other bytes), `added:`, `removed:`, `relabelled:` (other class or split)."""
    before_files = (before or {}).get("files") or {}
    after_files = (after or {}).get("files") or {}
    lines = []
    for name in sorted(before_files.keys() | after_files.keys()):
        old, new, path = before_files.get(name), after_files.get(name), shown_path(name)
        if old is None:
            lines.append(f"added: {path}")
        elif new is None:
            lines.append(f"removed: {path}")
        elif old.get("sha256") != new.get("sha256"):
            lines.append(f"changed: {path} (sha256 {old.get('sha256')} -> {new.get('sha256')})")
        elif old != new:
            lines.append(
                f"relabelled: {path} ({old.get('class')}/{old.get('split')} -> {new.get('class')}/{new.get('split')})"
            )
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more file(s)"]
    return [f"dataset_manifest: {line}" for line in lines]
