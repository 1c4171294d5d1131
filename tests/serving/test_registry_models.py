"""models:/NAME/VERSION and models:/NAME@ALIAS: resolved through the model registry (registered with the real
`image_classifier_runs` command), re-resolved on SIGHUP and --reload_every, swapped under load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from image_classifier.serving.predict import main as predict_main
from tests.conftest import command, run_command, run_trainer, trainer_args
from tests.serving.conftest import PredictionLoad, metric_samples, png_bytes, running_server, variant_run, wait_for

pytestmark = pytest.mark.slow


CLASSES_REVERSED, NON_FINITE, TOO_FEW_OUTPUTS = 3, 4, 5


def poisoned(state_dict) -> None:
    state_dict["fc3.bias"][0] = float("nan")


def nine_outputs(state_dict) -> None:
    state_dict["fc3.weight"] = state_dict["fc3.weight"][:9].clone()
    state_dict["fc3.bias"] = state_dict["fc3.bias"][:9].clone()


@pytest.fixture(scope="module")
def registry(trained_run, dataset, tmp_path_factory) -> Path:
    """An experiments folder with runs e/r1 (the session's run) and e/r2 (another seed), registered as versions
    1 and 2 of `cifar`, alias `production` on version 1; and three versions that must never serve in place of
    another: 3, r2's weights with its classes in reverse order; 4, with a NaN bias; 5, with 9 outputs for its
    10 classes."""
    experiments = tmp_path_factory.mktemp("registry") / "experiments"
    shutil.copytree(trained_run, experiments / "e" / "r1")
    trained = run_trainer(*trainer_args(dataset, experiments, "r2", "--num_epochs", "1", "--seed", "1"))
    assert trained.returncode == 0, trained.stderr
    r2 = experiments / "e" / "r2"
    classes = json.loads((r2 / "run.json").read_text())["classes"]

    def nudged(state_dict) -> None:  # other bytes, the same predictions to the eye
        state_dict["fc3.bias"] += 1e-6

    variant_run(r2, experiments / "e" / "reversed", classes=classes[::-1], change=nudged)
    variant_run(r2, experiments / "e" / "nan", change=poisoned)
    variant_run(r2, experiments / "e" / "nine", change=nine_outputs)
    runs = (("e/r1", ["--alias", "production"]), ("e/r2", []), ("e/reversed", []), ("e/nan", []), ("e/nine", []))
    for run, extra in runs:
        registered = runs_command("register", run, "--name", "cifar", *extra, experiments=experiments)
        assert registered.returncode == 0, registered.stderr
    return experiments


def runs_command(*args: str, experiments: Path):
    return run_command(
        [command("image_classifier_runs"), args[0], "--experiments_folder", str(experiments), *args[1:]],
        password=None,
        env={"MLFLOW_TRACKING_URI": ""},
    )


def reloads(server) -> dict[str, float]:
    """model_reloads_total by result: the sample values, not the metric's name."""
    text = httpx.get(server.url + "/metrics", timeout=60).text
    return {labels["result"]: value for labels, value in metric_samples(text, "image_classifier_model_reloads_total")}


def sha_of(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["model_sha256"]


def test_predict_resolves_versions_and_aliases(registry, test_pngs, capsys):
    for uri, version, run in (("models:/cifar/2", 2, "r2"), ("models:/cifar@production", 1, "r1")):
        code = predict_main(
            ["--model", uri, "--experiments_folder", str(registry), "--format", "json", str(test_pngs[0])]
        )
        assert code == 0
        model = json.loads(capsys.readouterr().out)["model"]
        assert (model["name"], model["version"], model["sha256"]) == ("cifar", version, sha_of(registry / "e" / run))


@pytest.mark.parametrize("uri, message", [("models:/cifar/9", "9"), ("models:/nothing@production", "nothing")])
def test_an_unknown_version_or_model_is_one_error_line(registry, test_pngs, capsys, uri, message):
    assert predict_main(["--model", uri, "--experiments_folder", str(registry), str(test_pngs[0])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_sighup_swaps_the_alias_under_load_without_a_failed_request(registry, offline, tmp_path):
    payload = png_bytes(offline.images[0])
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry)]
    with running_server(tmp_path, *model, env={"MLFLOW_TRACKING_URI": ""}) as server:
        with PredictionLoad(server.url, payload, scrape_models=True) as load:
            wait_for(lambda: load.latest_versions() == {1}, "answers from version 1")
            assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: load.latest_versions() == {2}, "every client to be answered by version 2")
            count = sum(len(answers) for answers in load.answers)
            wait_for(lambda: sum(len(answers) for answers in load.answers) > count + 20, "more answers from v2")
        assert load.errors == []
        versions_seen = {sample[0]["version"] for scrape in load.scrapes for sample in scrape}
        assert versions_seen == {"1", "2"} and all(len(scrape) == 1 for scrape in load.scrapes), load.scrapes
        assert all(scrape[0][1] == 1.0 for scrape in load.scrapes)
        statuses = {status for answers in load.answers for status, _ in answers}
        assert statuses == {200}, statuses
        for answers in load.answers:
            versions = [version for _, version in answers]
            assert versions == sorted(versions), "a client went back to the old version"
        assert sum(len(answers) for answers in load.answers) > 20
        metadata = httpx.get(server.url + "/metadata", timeout=60).json()["model"]
        assert (metadata["registry_version"], metadata["sha256"]) == (2, sha_of(registry / "e" / "r2"))
        assert reloads(server) == {"swapped": 1}

        # A version that fails its check (its file changed since registration) never replaces the served one.
        broken = registry / "e" / "r1" / "model.pth"
        original = broken.read_bytes()
        try:
            broken.write_bytes(b"corrupted")
            assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload (SIGHUP) failed" in server.log(), "the failed reload's error log")
            answer = httpx.post(
                server.url + "/predict", content=payload, headers={"Content-Type": "image/png"}, timeout=60
            )
            assert answer.status_code == 200 and answer.json()["model"]["version"] == 2
        finally:
            broken.write_bytes(original)
            runs_command("alias", "cifar", "production", "1", experiments=registry)
        assert "ERROR" in server.log()
        assert reloads(server) == {"swapped": 1, "failed": 1}


def test_reload_every_follows_the_alias_without_a_signal(registry, offline, tmp_path):
    payload = png_bytes(offline.images[0])
    assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry), "--reload_every", "1"]
    with running_server(tmp_path, *model, env={"MLFLOW_TRACKING_URI": ""}) as server:

        def served_version() -> int:
            return httpx.post(
                server.url + "/predict", content=payload, headers={"Content-Type": "image/png"}, timeout=60
            ).json()["model"]["version"]

        assert served_version() == 1
        wait_for(lambda: reloads(server).get("unchanged", 0) >= 1, "a periodic reload that finds version 1")
        assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
        wait_for(lambda: served_version() == 2, "the periodic reload to pick up version 2")
        counts = reloads(server)
        assert counts["swapped"] == 1 and counts["unchanged"] >= 1 and set(counts) == {"swapped", "unchanged"}


def served_version(server, payload: bytes) -> int:
    answer = httpx.post(server.url + "/predict", content=payload, headers={"Content-Type": "image/png"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["model"]["version"]


def hang_up_and_wait(server, registry: Path, version: int, log_line: str) -> None:
    assert runs_command("alias", "cifar", "production", str(version), experiments=registry).returncode == 0
    before = server.log().count(log_line)
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: server.log().count(log_line) > before, f"the log line {log_line!r}")


def test_a_version_with_other_classes_is_refused_unless_allowed(registry, offline, tmp_path):
    payload = png_bytes(offline.images[0])
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry)]
    assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
    with running_server(tmp_path, *model, env={"MLFLOW_TRACKING_URI": ""}) as server:
        hang_up_and_wait(server, registry, CLASSES_REVERSED, "reload (SIGHUP) refused")
        assert served_version(server, payload) == 2
        assert "restart with --allow_class_change" in server.log()
        assert reloads(server) == {"refused": 1}
    assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
    with running_server(tmp_path, *model, "--allow_class_change", env={"MLFLOW_TRACKING_URI": ""}) as server:
        hang_up_and_wait(server, registry, CLASSES_REVERSED, "now serving")
        answer = httpx.post(
            server.url + "/predict?top_k=10", content=payload, headers={"Content-Type": "image/png"}, timeout=60
        ).json()
        assert answer["model"]["version"] == CLASSES_REVERSED
        classes = json.loads((registry / "e" / "reversed" / "run.json").read_text())["classes"]
        assert {p["label"]: p["class"] for p in answer["predictions"]} == dict(enumerate(classes))
        assert reloads(server) == {"swapped": 1}


@pytest.mark.parametrize(
    "version, problem",
    [(NON_FINITE, "computes non-finite outputs"), (TOO_FEW_OUTPUTS, "has 9 outputs, but 10 classes are named")],
)
def test_a_broken_version_is_refused_at_load_and_at_reload(registry, offline, tmp_path, version, problem):
    started = run_command(
        [
            command("image_classifier_serve"),
            "--model",
            f"models:/cifar/{version}",
            "--experiments_folder",
            str(registry),
        ],
        password=None,
        env={"MLFLOW_TRACKING_URI": ""},
    )
    assert started.returncode == 1 and "Traceback" not in started.stderr
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and problem in last, started.stderr

    payload = png_bytes(offline.images[0])
    assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry)]
    with running_server(tmp_path, *model, env={"MLFLOW_TRACKING_URI": ""}) as server:
        hang_up_and_wait(server, registry, version, "reload (SIGHUP) failed")
        assert problem in server.log()
        assert served_version(server, payload) == 1
        assert reloads(server) == {"failed": 1}
    assert runs_command("alias", "cifar", "production", "1", experiments=registry).returncode == 0


def test_sigterm_during_a_reload_stuck_reading_the_registry_exits_within_the_graceful_timeout(registry, tmp_path):
    """Once the service runs, registry.json becomes a named pipe that nobody writes to (a registry on a
    dead file system): a reload blocks for ever reading it. The stop must not wait for it."""
    experiments = tmp_path / "experiments"
    shutil.copytree(registry, experiments)
    assert runs_command("alias", "cifar", "production", "1", experiments=experiments).returncode == 0
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(experiments)]
    with running_server(tmp_path, *model, "--graceful_timeout", "3", env={"MLFLOW_TRACKING_URI": ""}) as server:
        document = experiments / "registry.json"
        document.rename(experiments / "registry.json.away")
        os.mkfifo(document)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload (SIGHUP): resolving models:/cifar@production" in server.log(), "the reload to start")
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0, server.log()
        assert time.monotonic() - stopped_at < 3 + 5, server.log()  # the slack: a busy machine's process exit
        # The reload never ended: it was still reading when the service stopped.
        assert "reload (SIGHUP) failed" not in server.log() and "still version" not in server.log()
