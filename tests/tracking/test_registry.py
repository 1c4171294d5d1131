import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_classifier.errors import RegistryError, UserError
from image_classifier.run_dir import sha256_of
from image_classifier.tracking.file_registry import REGISTRY_FILE, FileRegistry
from image_classifier.tracking.registries import open_registry
from image_classifier.tracking.registry import ModelVersion, is_model_uri, parse_model_uri, version_of_source_run
from tests.conftest import REPO_ROOT, command, run_command, trainer_args
from tests.tracking.conftest import free_port

FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")

_PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


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


_REGISTER_WHEN_RELEASED = """
import contextlib, os, sys
from pathlib import Path
from image_classifier.tracking import file_registry
from image_classifier.tracking.registries import open_registry
experiments, run_dir, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[5]
ready, go = int(sys.argv[3]), int(sys.argv[4])
if mode == "unlocked":  # the writers' lock taken away: what the race test must catch
    file_registry.exclusive_lock = lambda path: contextlib.nullcontext()
os.write(ready, b"1")
os.close(ready)
os.read(go, 1)  # blocks until the test closes the other end: then every process goes at once
open_registry(experiments).register(run_dir, "race")
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


def _race(experiments: Path, copies: list[Path], mode: str) -> list[str]:
    """Register every copy from its own process, all released at the same instant once all are ready; what
    the registry lost (empty when every process added its version)."""
    (experiments / REGISTRY_FILE).unlink(missing_ok=True)
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    processes = []
    try:
        for copy in copies:
            argv = [sys.executable, "-c", _REGISTER_WHEN_RELEASED, str(experiments), str(copy)]
            argv += [str(ready_write), str(go_read), mode]
            processes.append(subprocess.Popen(argv, pass_fds=(ready_write, go_read)))
        os.close(ready_write)
        os.close(go_read)
        ready = b""
        while len(ready) < len(copies):  # one byte from each (b"" if they all died: the count says so)
            chunk = os.read(ready_read, len(copies))
            if not chunk:
                break
            ready += chunk
        assert len(ready) == len(copies), "a process died before the start"
    finally:
        os.close(go_write)  # the release; also what frees them if the test failed
        os.close(ready_read)
        codes = [process.wait(timeout=300) for process in processes]
    # Unlocked, a writer may also fail outright (another one removed its temporary file as a leftover).
    failed = [f"{sum(code != 0 for code in codes)} writer(s) failed"] if any(codes) else []
    versions = open_registry(experiments).versions("race")
    lost = sorted(set(f"e/{copy.name}" for copy in copies) - {v.source_run for v in versions})
    numbers = sorted(v.version for v in versions)
    return failed + lost + ([f"version numbers {numbers}"] if numbers != list(range(1, len(copies) + 1)) else [])


def test_parallel_register_processes_never_lose_an_entry(experiments):
    copies = _distinct_copies(experiments, 8)
    for _ in range(2):
        assert _race(experiments, copies, "locked") == []
    assert not list(experiments.glob(".*.tmp"))
    # The same race without the lock loses entries (it lost 5 or more of the 8 in every round tried): the
    # test sees what the lock prevents. A round might serialise by chance; one of three is enough.
    assert any(_race(experiments, copies, "unlocked") for _ in range(3))


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


# --- a damaged registry.json: one clear error, whatever the damage ---

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _valid_document(experiments: Path) -> dict:
    sha = json.loads((experiments / "e" / "seed0" / "run.json").read_text())["model_sha256"]
    entry = {"version": 1, "source_run": "e/seed0", "sha256": sha, "registered_at": "2024-01-01T00:00:00+00:00"}
    return {"format": 1, "models": {"m": {"versions": [{**entry, "test_accuracy": 50.0}], "aliases": {"prod": 1}}}}


def _places(value, path=()) -> list[tuple]:
    """Every place in a JSON document, as the keys and indexes that lead there."""
    places = [path]
    if isinstance(value, dict):
        places += [place for key, item in value.items() for place in _places(item, (*path, key))]
    elif isinstance(value, list):
        places += [place for index, item in enumerate(value) for place in _places(item, (*path, index))]
    return places


def _replaced(document, path: tuple, new, delete: bool):
    if not path:
        return new
    document = json.loads(json.dumps(document))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return document


@st.composite
def damaged_registries(draw, valid: dict) -> str:
    """registry.json texts: the valid one with a value replaced or a key dropped, truncated, or any JSON."""
    kind = draw(st.sampled_from(["replace", "drop", "truncate", "any"]))
    text = json.dumps(valid, indent=4)
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "any":
        return json.dumps(draw(_JSON))
    places = [p for p in _places(valid) if p] if kind == "drop" else _places(valid)
    place = draw(st.sampled_from(places))
    return json.dumps(_replaced(valid, place, draw(_JSON), delete=kind == "drop"))


_SOUND_BUT_LACKING = re.compile(r"m has no (version|alias) |is already version \d+ of m")


def _assert_clean(code: int, err: str, registry: Path, warning_only: bool = False) -> None:
    assert "Traceback" not in err, err
    if warning_only:  # list and show go on without the versions column
        assert code == 0, err
        if err:
            (line,) = err.strip().splitlines()
            assert "registered versions not shown" in line and str(registry) in line
    elif code != 0:
        assert code == 1
        (line,) = err.strip().splitlines()
        # A damaged file is named; a sound one that lacks what was asked for says what it lacks.
        assert line.startswith("error: ") and (str(registry) in line or _SOUND_BUT_LACKING.search(line)), line


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_any_damaged_registry_is_one_error_line_naming_the_file(experiments, capsys, data):
    from image_classifier.tracking.runs import main as runs

    registry = experiments / REGISTRY_FILE
    text = data.draw(damaged_registries(_valid_document(experiments)))
    folder = ("--experiments_folder", str(experiments))
    for argv in (
        ["list", *folder],
        ["show", "e/seed0", "--format", "json", *folder],
        ["models", *folder],
        ["models", "--format", "csv", *folder],
        ["models", "m", "--format", "json", *folder],
        ["alias", "m", "staging", "1", *folder],
        ["register", "e/seed1", "--name", "m", *folder],
    ):
        registry.write_text(text)
        code = runs(argv)
        out, err = capsys.readouterr()
        _assert_clean(code, err, registry, warning_only=argv[0] in ("list", "show"))
    for uri in ("models:/m/1", "models:/m@prod"):
        registry.write_text(text)
        try:
            version = open_registry(experiments).resolve(uri)
        except RegistryError as exc:
            assert str(registry) in str(exc) or _SOUND_BUT_LACKING.search(str(exc)), exc
        else:  # whatever was resolved is a checked file inside the experiments folder
            assert version.model_path.resolve().is_relative_to(experiments.resolve())
            assert sha256_of(version.model_path) == version.sha256


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": 1, "models": {"a": {"versions": [', "is damaged"),
        ('{"format": 1, "models": []}', '"models" is not an object'),
        ('{"format": 1, "models": {"m": {"versions": [{"version": 1}], "aliases": {}}}}', "source_run"),
        ('{"format": 1, "models": {"m": {"versions": [], "aliases": []}}}', "no object of aliases"),
        ('{"format": 1, "models": {"m": {"versions": [{"version": true}], "aliases": {}}}}', "whole number"),
        (b'{"format": 1, "models": {"\xff": {}}}', "is damaged"),
        ("[" * 100_000, "nested too deeply"),
        ('{"format": 1, "models": {}, "x": NaN}', "NaN is not JSON"),
    ],
)
def test_damaged_registries_name_what_is_wrong(experiments, text, message):
    registry = experiments / REGISTRY_FILE
    registry.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RegistryError, match=message) as error:
        open_registry(experiments).versions()
    assert str(registry) in str(error.value)


def _with_entry(experiments: Path, **changes) -> None:
    document = _valid_document(experiments)
    document["models"]["m"]["versions"][0].update(changes)
    (experiments / REGISTRY_FILE).write_text(json.dumps(document))


@pytest.mark.parametrize("source_run", ["../outside", "/tmp/x", "e/../../outside", "e/seed0/..", "e", "a/b/c"])
def test_a_source_run_outside_the_experiments_folder_is_refused(experiments, tmp_path, source_run):
    (tmp_path / "outside").mkdir()  # experiments/../outside: the registered bytes, where no run may lie
    (tmp_path / "outside" / "model.pth").write_bytes((experiments / "e" / "seed0" / "model.pth").read_bytes())
    _with_entry(experiments, source_run=source_run)
    with pytest.raises(RegistryError, match="is not EXPERIMENT/RUN"):
        open_registry(experiments).resolve("models:/m/1")


def test_a_source_run_linked_out_of_the_experiments_folder_is_refused(experiments, tmp_path):
    outside = tmp_path / "outside"
    (experiments / "e" / "seed0").rename(outside)
    (experiments / "e" / "seed0").symlink_to(outside)  # the run folder is a link out
    _with_entry(experiments)
    with pytest.raises(RegistryError, match="leads outside"):
        open_registry(experiments).resolve("models:/m/1")
    with pytest.raises(RegistryError, match="is not a run in"):
        open_registry(experiments).register(experiments / "e" / "seed0", "other")
    (experiments / "e" / "seed0").unlink()
    (experiments / "e" / "seed0").mkdir()
    for name in ("run.json", "metrics.json"):
        (experiments / "e" / "seed0" / name).write_bytes((outside / name).read_bytes())
    (experiments / "e" / "seed0" / "model.pth").symlink_to(outside / "model.pth")  # the file is a link out
    with pytest.raises(RegistryError, match="leads outside"):
        open_registry(experiments).resolve("models:/m/1")
    with pytest.raises(RegistryError, match="outside"):
        open_registry(experiments).register(experiments / "e" / "seed0", "other")


def test_a_run_whose_metrics_hold_nan_registers_with_no_accuracy(experiments):
    # Older versions wrote NaN for a diverged run's figures; the registry stays strict JSON.
    metrics = experiments / "e" / "seed0" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"test_accuracy": ', '"test_accuracy": NaN, "was": ', 1))
    version = open_registry(experiments).register(experiments / "e" / "seed0", "m")
    assert version.test_accuracy is None
    text = (experiments / REGISTRY_FILE).read_text()
    assert "NaN" not in text and json.loads(text)["models"]["m"]["versions"][0]["test_accuracy"] is None


def test_a_registry_that_cannot_be_written_is_one_error(experiments):
    (experiments / f".{REGISTRY_FILE}.{os.getpid()}.tmp").mkdir()  # in the way of the temporary file
    with pytest.raises(RegistryError, match=f"cannot write the registry {experiments / REGISTRY_FILE}"):
        open_registry(experiments).register(experiments / "e" / "seed0", "m")


@pytest.mark.slow
@pytest.mark.parametrize(
    "document",
    [
        '{"format": 1, "models": {"m": {"versions": [{"version": 1}], "aliases": {}}}}',  # fields missing
        '{"format": 1, "models": {"m": []}}',  # wrong shape
    ],
)
def test_the_trainer_and_the_services_say_one_line_about_a_damaged_registry(dataset, tmp_path, document):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / REGISTRY_FILE).write_text(document)
    image = tmp_path / "image.png"
    image.write_bytes(base64.b64decode(_PNG_1X1))
    folder = ("--experiments_folder", str(experiments))
    for argv in (
        [command("image_classifier_trainer"), *trainer_args(dataset, experiments), "--pretrained_model", "models:/m/1"],
        [command("image_classifier_predict"), "--model", "models:/m/1", *folder, str(image)],
        [command("image_classifier_serve"), "--model", "models:/m/1", *folder, "--port", str(free_port())],
    ):
        result = run_command(argv)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and f"the registry {experiments / REGISTRY_FILE} is damaged" in line


def test_a_version_names_a_run_folder_only_for_experiment_slash_run(tmp_path):
    """Both backends build versions with `version_of_source_run`: a source run that is not EXPERIMENT/RUN
    (an MLflow tag is anybody's text) never becomes a folder, and a run folder that is gone is no run_dir."""
    (tmp_path / "e" / "r").mkdir(parents=True)
    common = dict(name="m", version=1, aliases=["b", "a"], sha256="0" * 64, registered_at="", test_accuracy=None)
    here = version_of_source_run(tmp_path, "e/r", **common)
    assert (here.run_dir, here.model_path, here.aliases) == (
        tmp_path / "e" / "r",
        tmp_path / "e/r/model.pth",
        ("a", "b"),
    )
    download = tmp_path / ".mlflow-models" / "m" / "1" / "model.pth"
    for source_run in ("../..", "e/r/../../x", "/etc", "e/gone"):
        version = version_of_source_run(tmp_path, source_run, **common, elsewhere=download)
        assert (version.run_dir, version.model_path, version.source_run) == (None, download, source_run)
    gone = version_of_source_run(tmp_path, "e/gone", **common)
    assert (gone.run_dir, gone.model_path) == (None, tmp_path / "e/gone/model.pth")
