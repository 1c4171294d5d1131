import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image_classifier.errors import RegistryError, UserError
from image_classifier.run_dir import sha256_of
from image_classifier.tracking.registry import (
    REGISTRY_FILE,
    FileRegistry,
    ModelVersion,
    is_model_uri,
    open_registry,
    parse_model_uri,
)
from tests.conftest import REPO_ROOT, command, run_command

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")


def test_register_numbers_versions_and_resolves_them(experiments):
    registry = open_registry(experiments)
    assert isinstance(registry, FileRegistry)
    first = registry.register(experiments / "e" / "seed0", "cifar-net", aliases=["production"])
    second = registry.register(experiments / "e" / "seed1", "cifar-net")
    assert (first.version, first.aliases, first.source_run) == (1, ("production",), "e/seed0")
    assert (second.version, second.aliases, second.source_run) == (2, (), "e/seed1")
    run_json = json.loads((experiments / "e" / "seed0" / "run.json").read_text())
    metrics = json.loads((experiments / "e" / "seed0" / "metrics.json").read_text())
    assert first.sha256 == run_json["model_sha256"] == sha256_of(first.model_path)
    assert first.model_path == experiments / "e" / "seed0" / "model.pth"
    assert first.run_dir == experiments / "e" / "seed0"
    assert first.test_accuracy == metrics["test_accuracy"]
    assert registry.resolve("models:/cifar-net/2") == second
    assert registry.resolve("models:/cifar-net@production") == first
    assert registry.versions() == registry.versions("cifar-net") == [first, second]


def test_the_registry_is_one_strict_json_file_that_copies_no_weights(experiments):
    open_registry(experiments).register(experiments / "e" / "seed0", "cifar-net", aliases=["staging"])
    document = json.loads((experiments / REGISTRY_FILE).read_text())
    (entry,) = document["models"]["cifar-net"]["versions"]
    assert entry["source_run"] == "e/seed0"  # relative: the experiments folder may move
    assert document["models"]["cifar-net"]["aliases"] == {"staging": 1}
    assert sorted(p.name for p in experiments.iterdir()) == ["e", REGISTRY_FILE, REGISTRY_FILE + ".lock"]
    moved = experiments.rename(experiments.with_name("moved"))
    assert open_registry(moved).resolve("models:/cifar-net@staging").model_path == moved / "e/seed0/model.pth"


def test_an_alias_moves_between_versions(experiments):
    registry = open_registry(experiments)
    registry.register(experiments / "e" / "seed0", "cifar-net", aliases=["production"])
    registry.register(experiments / "e" / "seed1", "cifar-net")
    moved = registry.set_alias("cifar-net", "production", 2)
    assert (moved.version, moved.aliases) == (2, ("production",))
    assert registry.resolve("models:/cifar-net@production").source_run == "e/seed1"
    assert [v.aliases for v in registry.versions("cifar-net")] == [(), ("production",)]
    with pytest.raises(RegistryError, match="no version 3"):
        registry.set_alias("cifar-net", "production", 3)
    with pytest.raises(RegistryError, match="no model named 'other'"):
        registry.set_alias("other", "production", 1)


def test_a_registered_model_whose_file_is_missing_or_changed_is_refused(experiments):
    registry = open_registry(experiments)
    registry.register(experiments / "e" / "seed0", "a")
    registry.register(experiments / "e" / "seed1", "b")
    with (experiments / "e" / "seed0" / "model.pth").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(RegistryError, match="changed since it was registered"):
        registry.resolve("models:/a/1")
    (experiments / "e" / "seed1" / "model.pth").unlink()
    with pytest.raises(RegistryError, match="model file .* is missing"):
        registry.resolve("models:/b/1")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("models:/nope/1", "no model named 'nope'"),
        ("models:/cifar-net/7", "no version 7"),
        ("models:/cifar-net@gone", "no alias 'gone'"),
        ("models:/cifar-net/0", "whole number from 1"),
        ("models:/cifar-net/x", "whole number from 1"),
        ("models:/cifar-net", "not a model URI"),
        ("models:/cifar net/1", "invalid model name"),
        ("models:/../1", "invalid model name"),
        ("models:/cifar-net/1/2", "not a model URI"),
        ("models:/cifar-net@latest", "invalid alias"),
    ],
)
def test_unknown_or_malformed_uris_are_user_errors(experiments, uri, message):
    registry = open_registry(experiments)
    registry.register(experiments / "e" / "seed0", "cifar-net")
    with pytest.raises(RegistryError, match=message) as error:
        registry.resolve(uri)
    assert isinstance(error.value, UserError)


def test_register_refuses_what_is_not_a_completed_unchanged_run(experiments, tmp_path):
    registry = open_registry(experiments)
    for name, alias, message in [
        ("bad name", None, "invalid model name"),
        ("ok", "v2", "invalid alias"),
        ("ok", "7", "invalid alias"),
        ("ok", "a/b", "invalid alias"),
    ]:
        with pytest.raises(RegistryError, match=message):
            registry.register(experiments / "e" / "seed0", name, aliases=[alias] if alias else [])
    registry.register(experiments / "e" / "seed0", "ok")
    with pytest.raises(RegistryError, match="already version 1 of ok"):
        registry.register(experiments / "e" / "seed0", "ok")
    unfinished = experiments / "e" / "seed1.incomplete"
    (experiments / "e" / "seed1").rename(unfinished)
    with pytest.raises(RegistryError, match="only a completed run"):
        registry.register(unfinished, "ok")
    unfinished.rename(experiments / "e" / "seed1")
    with (experiments / "e" / "seed1" / "model.pth").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(RegistryError, match="changed since its run wrote it"):
        registry.register(experiments / "e" / "seed1", "ok")
    with pytest.raises(RegistryError, match="is not a run in"):
        registry.register(tmp_path, "ok")
    assert [v.version for v in registry.versions("ok")] == [1]  # nothing refused was recorded


def test_a_damaged_registry_file_is_a_clear_error(experiments):
    (experiments / REGISTRY_FILE).write_text('{"format": 1, "models": {"a": {"versions": [')
    with pytest.raises(RegistryError, match="is damaged"):
        open_registry(experiments).versions()


def test_model_uris():
    assert is_model_uri("models:/cifar-net/1") and is_model_uri("models:/x@prod") and is_model_uri("models:/")
    assert not is_model_uri("e/r/model.pth") and not is_model_uri("/abs/models/x")
    assert str(parse_model_uri("models:/cifar-net@prod")) == "models:/cifar-net@prod"
    assert parse_model_uri("models:/cifar-net/12").version == 12
    assert ModelVersion.__dataclass_params__.frozen


_REGISTER_AFTER_START = """
import sys, time
from pathlib import Path
from image_classifier.tracking.registry import open_registry
start = Path(sys.argv[3])
while not start.exists():
    time.sleep(0.01)
open_registry(Path(sys.argv[1])).register(Path(sys.argv[2]), "race")
"""


def _distinct_copies(experiments: Path, count: int) -> list[Path]:
    """Copies of one run with different model bytes (run.json updated to match): distinct model versions."""
    source = experiments / "e" / "seed0"
    copies = []
    for index in range(count):
        copy = experiments / "e" / f"copy{index}"
        copy.mkdir()
        for name in ("metrics.json", "model.pth"):
            (copy / name).write_bytes((source / name).read_bytes())
        with (copy / "model.pth").open("ab") as stream:
            stream.write(bytes([index]))
        manifest = json.loads((source / "run.json").read_text())
        manifest["model_sha256"] = sha256_of(copy / "model.pth")
        (copy / "run.json").write_text(json.dumps(manifest))
        copies.append(copy)
    return copies


def test_parallel_register_processes_never_lose_an_entry(experiments, tmp_path):
    copies = _distinct_copies(experiments, 8)
    start = tmp_path / "start"
    processes = [
        subprocess.Popen([sys.executable, "-c", _REGISTER_AFTER_START, str(experiments), str(copy), str(start)])
        for copy in copies
    ]
    time.sleep(2)  # let them all reach the start line; the race holds however many are there in time
    start.touch()
    assert [process.wait(timeout=300) for process in processes] == [0] * len(copies)
    versions = open_registry(experiments).versions("race")
    assert sorted(v.version for v in versions) == list(range(1, len(copies) + 1))
    assert sorted(v.source_run for v in versions) == sorted(f"e/{copy.name}" for copy in copies)
    assert not list(experiments.glob(".*.tmp"))


def test_a_kill_inside_a_registry_write_keeps_the_old_document_and_the_rerun_leaves_no_leftovers(experiments):
    registry = open_registry(experiments)
    registry.register(experiments / "e" / "seed0", "cifar-net", aliases=["production"])
    before = (experiments / REGISTRY_FILE).read_bytes()
    register = ["runs", "register", "e/seed1", "--name", "cifar-net", "--experiments_folder", str(experiments)]
    killed = run_command([sys.executable, FAULT_INJECTION, "KILL", "torn:registry.json:1:100", *register])
    assert killed.returncode == -9, killed.stderr
    assert (experiments / REGISTRY_FILE).read_bytes() == before  # the old document, whole
    assert [v.version for v in registry.versions("cifar-net")] == [1]

    again = run_command([command("image_classifier_runs"), *register[1:]])  # the user runs it again
    assert again.returncode == 0, again.stderr
    assert [v.source_run for v in registry.versions("cifar-net")] == ["e/seed0", "e/seed1"]
    assert sorted(p.name for p in experiments.iterdir()) == ["e", REGISTRY_FILE, f"{REGISTRY_FILE}.lock"]
