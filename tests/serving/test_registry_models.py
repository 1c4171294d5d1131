"""models:/NAME/VERSION and models:/NAME@ALIAS: resolved through the model registry (registered with the real
`image_classifier_runs` command), re-resolved on SIGHUP and --reload_every, swapped under load."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from image_classifier.serving.predict import main as predict_main
from tests.conftest import command, run_command, run_trainer, trainer_args
from tests.serving.conftest import png_bytes, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(trained_run, dataset, tmp_path_factory) -> Path:
    """An experiments folder with runs e/r1 (the session's run) and e/r2 (another seed), registered as versions
    1 and 2 of `cifar`, alias `production` on version 1."""
    experiments = tmp_path_factory.mktemp("registry") / "experiments"
    shutil.copytree(trained_run, experiments / "e" / "r1")
    trained = run_trainer(*trainer_args(dataset, experiments, "r2", "--num_epochs", "1", "--seed", "1"))
    assert trained.returncode == 0, trained.stderr
    for run, extra in (("e/r1", ["--alias", "production"]), ("e/r2", [])):
        registered = runs_command("register", run, "--name", "cifar", *extra, experiments=experiments)
        assert registered.returncode == 0, registered.stderr
    return experiments


def runs_command(*args: str, experiments: Path):
    return run_command(
        [command("image_classifier_runs"), args[0], "--experiments_folder", str(experiments), *args[1:]],
        password=None,
        env={"MLFLOW_TRACKING_URI": ""},
    )


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


class Load:
    """Clients posting images without pause until stopped; every answer's status and model version kept."""

    def __init__(self, url: str, payload: bytes, clients: int = 6) -> None:
        self.url, self.payload = url, payload
        self.stopping = threading.Event()
        self.answers: list[list[tuple[int, int | None]]] = [[] for _ in range(clients)]
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stopping.is_set():
                response = client.post(
                    self.url + "/predict", content=self.payload, headers={"Content-Type": "image/png"}
                )
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                self.answers[index].append((response.status_code, version))

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def latest_versions(self) -> set:
        return {answers[-1][1] for answers in self.answers if answers}


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_sighup_swaps_the_alias_under_load_without_a_failed_request(registry, offline, tmp_path):
    payload = png_bytes(offline.images[0])
    model = ["--model", "models:/cifar@production", "--experiments_folder", str(registry)]
    with running_server(tmp_path, *model, env={"MLFLOW_TRACKING_URI": ""}) as server:
        with Load(server.url, payload) as load:
            wait_for(lambda: load.latest_versions() == {1}, "answers from version 1")
            assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: load.latest_versions() == {2}, "every client to be answered by version 2")
            time.sleep(1)
        statuses = {status for answers in load.answers for status, _ in answers}
        assert statuses == {200}, statuses
        for answers in load.answers:
            versions = [version for _, version in answers]
            assert versions == sorted(versions), "a client went back to the old version"
        assert sum(len(answers) for answers in load.answers) > 20
        metadata = httpx.get(server.url + "/metadata", timeout=60).json()["model"]
        assert (metadata["registry_version"], metadata["sha256"]) == (2, sha_of(registry / "e" / "r2"))

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
        assert runs_command("alias", "cifar", "production", "2", experiments=registry).returncode == 0
        wait_for(lambda: served_version() == 2, "the periodic reload to pick up version 2")
        assert "model_reloads_total" in httpx.get(server.url + "/metrics", timeout=60).text
