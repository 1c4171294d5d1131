"""The MLflow backend against a real `mlflow server` process, read back through MLflow's own client."""

import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from image_classifier.distributed import COLLECTIVE_TIMEOUT
from image_classifier.errors import RegistryError
from image_classifier.model.spec import spec_of_run
from image_classifier.run_dir import sha256_of
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.model_source import load_model
from image_classifier.tracking.mlflow_client import CALL_SECONDS, ENVIRONMENT_DEFAULTS
from image_classifier.tracking.registries import open_registry
from tests.conftest import PASSWORD, REPO_ROOT, RUN_FILES, command, run_command, run_trainer, trainer_args
from tests.tracking.conftest import free_port, started

pytestmark = pytest.mark.slow

TOKEN = "tok-Zq81-never-stored"  # credentials in the tracking URI: they must not land anywhere either
PROXY = str(REPO_ROOT / "tests" / "tracking" / "mlflow_proxy.py")
FAULT_INJECTION = str(REPO_ROOT / "tests" / "fault_injection.py")
SAME_AS_SEED0 = ("--seed", "0", "--batch_size", "10")  # the arguments of the trained e/seed0


def _with_credentials(uri: str) -> str:
    return uri.replace("http://", f"http://someone:{TOKEN}@")


def _client(server) -> MlflowClient:
    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def _files_containing(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


def test_the_trainer_logs_params_tags_metrics_and_files_and_never_a_secret(
    dataset, mlflow_server, trained_experiments, tmp_path
):
    experiments = tmp_path / "experiments"
    env = {"MLFLOW_TRACKING_URI": _with_credentials(mlflow_server.uri)}
    result = run_trainer(*trainer_args(dataset, experiments, "logged", *SAME_AS_SEED0), env=env)
    assert result.returncode == 0, result.stderr
    run_dir = experiments / "e" / "logged"
    manifest = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert manifest["mlflow"]["lost_calls"] == 0 and manifest["mlflow"]["error"] is None
    assert manifest["mlflow"]["tracking_uri"] == mlflow_server.uri  # without the credentials
    # Success is said, with where to look: the run's page on the server (never the URI's credentials).
    run_id, experiment_id = manifest["mlflow"]["run_id"], manifest["mlflow"]["experiment_id"]
    page = f"{mlflow_server.uri}/#/experiments/{experiment_id}/runs/{run_id}"
    assert f"logging to MLflow run {run_id}: {page}\n" in result.stderr
    assert f"MLflow run finished with every call logged: {run_id}: {page}\n" in result.stderr
    with urllib.request.urlopen(page, timeout=60) as answer:  # the MLflow UI answers there
        assert answer.status == 200

    client = _client(mlflow_server)
    run = client.get_run(manifest["mlflow"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "e"
    assert (run.info.run_name, run.info.status) == ("logged", "FINISHED")
    assert run.data.params == {key: str(value) for key, value in manifest["arguments"].items()}
    assert run.data.tags["versions.torch"] == manifest["versions"]["torch"]
    assert (
        run.data.tags["dataset.sha256.cifar-10-batches-py/test_batch"]
        == manifest["dataset"]["sha256"]["cifar-10-batches-py/test_batch"]
    )
    assert run.data.tags["model_sha256"] == manifest["model_sha256"]
    for key in ("test_accuracy", "train_loss", "test_loss", "images_per_second"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in logged] == [(e["epoch"], pytest.approx(e[key])) for e in metrics["history"]]
    plane = client.get_metric_history(run.info.run_id, "class_accuracy.plane")
    assert [m.value for m in plane] == [pytest.approx(e["class_accuracy"]["plane"]) for e in metrics["history"]]
    assert sorted(item.path for item in client.list_artifacts(run.info.run_id)) == RUN_FILES
    downloaded = Path(client.download_artifacts(run.info.run_id, "model.pth", str(tmp_path)))
    assert sha256_of(downloaded) == manifest["model_sha256"]

    # Logging changes nothing in the results: the same bytes as the same run trained without MLflow.
    assert manifest["model_sha256"] == sha256_of(trained_experiments / "e" / "seed0" / "model.pth")
    for secret in (PASSWORD, TOKEN):
        assert _files_containing(mlflow_server.folder, secret) == []
        assert _files_containing(experiments, secret) == []
        assert secret not in result.stdout + result.stderr


def test_a_server_that_is_down_costs_one_warning_and_changes_nothing(dataset, trained_experiments, tmp_path):
    experiments = tmp_path / "experiments"
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    result = run_trainer(*trainer_args(dataset, experiments, "offline", *SAME_AS_SEED0), env=env)
    assert result.returncode == 0, result.stderr
    assert len(_warnings(result.stderr)) == 1 and "MLflow logging stopped" in result.stderr
    run_dir = experiments / "e" / "offline"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
    record = json.loads((run_dir / "run.json").read_text())["mlflow"]
    assert record["lost_calls"] > 0 and "no answer from the server" in record["error"] and record["run_id"] is None
    assert sha256_of(run_dir / "model.pth") == sha256_of(trained_experiments / "e" / "seed0" / "model.pth")


# Credentials whose password holds what ends a URL's authority ('/', '?', '#'), '@' and %-escapes, in
# pieces that are each looked for in everything the commands write and print.
CREDENTIAL_PIECES = ("user-Qa1", "pw-Zk9", "pw-Xy7", "pw-Wv3", "pw-Ut5", "pw-Rs2")


def test_credentials_in_a_tracking_uri_reach_no_file_log_or_error(dataset, tmp_path):
    port = free_port()  # nothing listens there
    uris = {
        # the HTTP client would misread it (and send part of the password to 127.0.0.1:pw-Zk9...): refused
        "misread": f"http://user-Qa1:pw-Zk9/pw-Xy7?pw-Wv3#pw-Ut5@pw-Rs2@127.0.0.1:{port}",
        # readable as written: tried, and nobody answers
        "readable": f"http://user-Qa1:pw-Zk9@pw-Xy7%2Fpw-Wv3%40pw-Ut5:pw-Rs2@127.0.0.1:{port}",
    }
    experiments = tmp_path / "experiments"
    shown = []
    for name, uri in uris.items():
        options = ("--num_epochs", "1", "--verbose", "--mlflow_tracking_uri", uri)
        result = run_trainer(*trainer_args(dataset, experiments, name, *options))
        assert result.returncode == 0, result.stderr
        assert len(_warnings(result.stderr)) == 1 and "MLflow logging stopped" in result.stderr
        record = json.loads((experiments / "e" / name / "run.json").read_text())["mlflow"]
        assert record["tracking_uri"] == f"http://127.0.0.1:{port}" and record["lost_calls"] > 0
        assert ("hold '/', '?', '#'" if name == "misread" else "no answer from the server") in record["error"]
        shown += [result.stdout, result.stderr]

        env = {"MLFLOW_TRACKING_URI": uri}
        folder = ("--experiments_folder", str(experiments))
        for argv in (["list"], ["show", f"e/{name}"], ["models"], ["register", f"e/{name}", "--name", "m"]):
            result = run_command([command("image_classifier_runs"), *argv, *folder], env=env)
            assert result.returncode == (0 if argv[0] in ("list", "show") else 1), result.stderr
            assert "Traceback" not in result.stderr
            shown += [result.stdout, result.stderr]
        predict = [command("image_classifier_predict"), "--model", "models:/m@production", str(tmp_path)]
        result = run_command([*predict, *folder, "--mlflow_tracking_uri", uri])
        assert result.returncode == 1 and "Traceback" not in result.stderr and "error: " in result.stderr
        shown += [result.stdout, result.stderr]

    for piece in CREDENTIAL_PIECES:
        assert _files_containing(tmp_path, piece) == []
        assert not [text for text in shown if piece in text], piece


def test_a_server_that_dies_mid_run_never_stops_training(dataset, mlflow_server, tmp_path):
    experiments = tmp_path / "experiments"
    port = free_port()
    # The server answers until it has stored the first epoch's metrics, then dies.
    with started([PROXY, str(port), mlflow_server.uri, "runs/log-batch", "2"], port):
        env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        result = run_trainer(*trainer_args(dataset, experiments, "dies", "--num_epochs", "3"), env=env)
    assert result.returncode == 0, result.stderr
    assert len(_warnings(result.stderr)) == 1 and "MLflow logging stopped" in result.stderr
    record = json.loads((experiments / "e" / "dies" / "run.json").read_text())["mlflow"]
    assert record["lost_calls"] > 0 and record["run_id"] is not None
    logged = _client(mlflow_server).get_metric_history(record["run_id"], "test_accuracy")
    assert [m.step for m in logged] == [1]  # what reached the server before it died is there


# MLflow's variables that would change how long a request waits: the tests below run with the package's own
# settings, as a user gets them, whatever the environment running the tests says.
_MLFLOW_WAITS = {name: "" for name in ENVIRONMENT_DEFAULTS if name.startswith("MLFLOW_HTTP_")}
# Slack for the run itself to take longer than the baseline run (a busy machine: 20-35 % noise, and up to
# 40 s to start a process that imports torch).
_SLACK_SECONDS = 60


def _timed_run(*args: str, env: dict) -> tuple[float, object]:
    started_at = time.monotonic()
    result = run_trainer(*args, env=env)
    return time.monotonic() - started_at, result


@pytest.mark.parametrize(
    "server",
    [
        ("--hang",),  # accepts, never answers
        ("--drip",),  # answers a byte every 2 s, forever: no read timeout fires
        ("--busy", "429", "3600"),  # "too many requests, come back in an hour"
        ("--busy", "503", "3600"),
    ],
    ids=["hangs", "drips", "429", "503"],
)
def test_a_server_that_stalls_holds_training_one_call_at_most(dataset, tmp_path, server):
    experiments = tmp_path / "experiments"
    without_server = {"MLFLOW_TRACKING_URI": "", **_MLFLOW_WAITS}
    baseline, result = _timed_run(*trainer_args(dataset, experiments, "baseline"), env=without_server)
    assert result.returncode == 0, result.stderr
    port = free_port()
    with started([PROXY, str(port), *server], port):
        env = {**_MLFLOW_WAITS, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}  # the package's defaults
        elapsed, result = _timed_run(*trainer_args(dataset, experiments, "stalled"), env=env)
    assert result.returncode == 0, result.stderr
    (warning,) = _warnings(result.stderr)
    assert "MLflow logging stopped (start the run: " in warning
    record = json.loads((experiments / "e" / "stalled" / "run.json").read_text())["mlflow"]
    assert record["lost_calls"] > 1 and record["error"].startswith("start the run: ")
    # The README's bound: one call holds training CALL_SECONDS at most, and after it nothing waits.
    assert elapsed < baseline + CALL_SECONDS + _SLACK_SECONDS, (elapsed, baseline)


def test_under_torchrun_a_stalled_server_holds_rank_0_less_than_the_collective_timeout(dataset, tmp_path):
    from tests.test_distributed import torchrun, trainer_module

    experiments = tmp_path / "experiments"
    port = free_port()
    # Rank 0 meets the server at the start of the run; rank 1 waits for it in the first collective.
    with started([PROXY, str(port), "--drip"], port):
        env = {**_MLFLOW_WAITS, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        started_at = time.monotonic()
        result = torchrun(*trainer_module(*trainer_args(dataset, experiments, "ddp")), env=env)
        elapsed = time.monotonic() - started_at
    assert result.returncode == 0, result.stderr
    assert f"no answer within {CALL_SECONDS:g} s" in result.stderr
    assert json.loads((experiments / "e" / "ddp" / "run.json").read_text())["world_size"] == 2
    assert elapsed < COLLECTIVE_TIMEOUT.total_seconds()


def _runs(*argv: str, env: dict) -> str:
    result = run_command([command("image_classifier_runs"), *argv], env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_register_alias_models_and_training_from_mlflows_registry(dataset, mlflow_server, experiments, tmp_path):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    folder = ("--experiments_folder", str(experiments))
    out = _runs("register", "e/seed0", "--name", "cifar-net", "--alias", "production", *folder, env=env)
    assert "cifar-net version 1 (aliases: production)" in out and "MLflow model registry" in out
    _runs("register", "e/seed1", "--name", "cifar-net", *folder, env=env)
    _runs("alias", "cifar-net", "production", "2", *folder, env=env)
    listed = json.loads(_runs("models", "cifar-net", "--format", "json", *folder, env=env))
    assert [(m["version"], m["aliases"], m["source_run"]) for m in listed] == [
        (1, [], "e/seed0"),
        (2, ["production"], "e/seed1"),
    ]
    assert not (experiments / "registry.json").exists()  # with a tracking URI, MLflow is the registry

    client = _client(mlflow_server)
    production = client.get_model_version_by_alias("cifar-net", "production")
    seed1_sha = json.loads((experiments / "e" / "seed1" / "run.json").read_text())["model_sha256"]
    assert (production.version, production.tags["sha256"], production.tags["source_run"]) == ("2", seed1_sha, "e/seed1")
    registered = client.get_run(production.run_id)
    assert registered.info.run_name == "seed1" and registered.data.tags["model_sha256"] == seed1_sha

    result = run_trainer(
        *trainer_args(dataset, experiments, "tuned", "--pretrained_model", "models:/cifar-net@production"), env=env
    )
    assert result.returncode == 0, result.stderr
    pretrained = json.loads((experiments / "e" / "tuned" / "run.json").read_text())["pretrained_model"]
    assert pretrained == {
        "path": str(experiments / "e" / "seed1" / "model.pth"),
        "sha256": seed1_sha,
        "uri": "models:/cifar-net@production",
        "version": 2,
    }

    # Another machine, without the run folders: the weights come from MLflow, checked by their sha256.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = open_registry(elsewhere, mlflow_server.uri).resolve("models:/cifar-net/1")
    assert version.run_dir is None and version.model_path.is_relative_to(elsewhere)
    assert sha256_of(version.model_path) == sha256_of(experiments / "e" / "seed0" / "model.pth")
    # With the run's record, which the predict command and the service build the model from.
    seed0 = json.loads((experiments / "e" / "seed0" / "run.json").read_text())
    # (The MLflow run holding these bytes may be another run's with the same weights: the same seed, earlier.)
    downloaded = json.loads((version.model_path.parent / "run.json").read_text())
    assert downloaded["model_sha256"] == seed0["model_sha256"] and spec_of_run(downloaded) == spec_of_run(seed0)
    request = ModelRequest("models:/cifar-net/1", experiments_folder=elsewhere, tracking_uri=mlflow_server.uri)
    served = load_model(request)
    assert served.spec == spec_of_run(seed0) and served.info.sha256 == seed0["model_sha256"]


def test_without_a_tracking_uri_mlflow_is_never_imported(trained_experiments):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from image_classifier.tracking.registries import open_registry\n"
        "from image_classifier.tracking.runs import main\n"
        f"main(['list', '--experiments_folder', {str(trained_experiments)!r}])\n"
        f"open_registry(Path({str(trained_experiments)!r})).versions()\n"
        "print('mlflow' in sys.modules)\n"
    )
    result = run_command([sys.executable, "-c", code], env={"MLFLOW_TRACKING_URI": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_resumed_run_continues_its_mlflow_run_with_the_same_bytes(
    dataset, mlflow_server, trained_experiments, tmp_path
):
    experiments = tmp_path / "experiments"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    args = trainer_args(dataset, experiments, "resumed", *SAME_AS_SEED0)
    stopped = run_command([sys.executable, FAULT_INJECTION, "TERM", "evaluate:2", *args], env=env)
    assert stopped.returncode == 143, stopped.stderr
    started_record = json.loads((experiments / "e" / "resumed.incomplete" / "run.json").read_text())["mlflow"]
    assert _client(mlflow_server).get_run(started_record["run_id"]).info.status == "KILLED"

    resumed = run_trainer(*args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((experiments / "e" / "resumed" / "run.json").read_text())
    assert manifest["mlflow"]["run_id"] == started_record["run_id"] and manifest["mlflow"]["lost_calls"] == 0
    run = _client(mlflow_server).get_run(started_record["run_id"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in _client(mlflow_server).get_metric_history(run.info.run_id, "test_accuracy")]
    assert sorted(set(steps)) == [1, 2]
    assert manifest["model_sha256"] == sha256_of(trained_experiments / "e" / "seed0" / "model.pth")


def test_the_runs_command_with_a_server_that_is_down(trained_experiments):
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    folder = ("--experiments_folder", str(trained_experiments))
    models = run_command([command("image_classifier_runs"), "models", *folder], env=env)
    assert models.returncode == 1 and "Traceback" not in models.stderr
    (error,) = [line for line in models.stderr.splitlines() if line.startswith("error: ")]
    assert "no answer from the server" in error and "Connection refused" in error
    listing = run_command([command("image_classifier_runs"), "list", *folder], env=env)
    assert listing.returncode == 0 and len(_warnings(listing.stderr)) == 1  # the runs, without versions
    assert [line.split()[1] for line in listing.stdout.splitlines()[1:]] == ["seed0", "seed1"]


def test_a_run_from_mlflows_registry_resumes_while_the_server_is_down(dataset, mlflow_server, experiments):
    folder = ("--experiments_folder", str(experiments))
    _runs("register", "e/seed0", "--name", "resume-net", "--alias", "production", *folder, env=_env(mlflow_server))
    args = trainer_args(dataset, experiments, "resumed", "--pretrained_model", "models:/resume-net@production")
    killed = run_command([sys.executable, FAULT_INJECTION, "KILL", "train:2:5", *args], env=_env(mlflow_server))
    assert killed.returncode == -9, killed.stderr

    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    resumed = run_trainer(*args, "--resume", env=down)
    assert resumed.returncode == 0, resumed.stderr
    assert len(_warnings(resumed.stderr)) == 1 and "MLflow logging stopped" in resumed.stderr
    manifest = json.loads((experiments / "e" / "resumed" / "run.json").read_text())
    assert (manifest["pretrained_model"]["uri"], manifest["pretrained_model"]["version"]) == (
        "models:/resume-net@production",
        1,
    )
    # The bytes of the same run started from the file itself, without any registry.
    direct = run_trainer(
        *trainer_args(dataset, experiments, "direct", "--pretrained_model", str(experiments / "e/seed0/model.pth"))
    )
    assert direct.returncode == 0, direct.stderr
    assert manifest["model_sha256"] == sha256_of(experiments / "e" / "direct" / "model.pth")


def _env(server) -> dict:
    return {"MLFLOW_TRACKING_URI": server.uri}


def test_versions_mlflow_cannot_vouch_for_are_refused_before_any_download(mlflow_server, experiments, tmp_path):
    """Versions made by other tools (or a tampered server): no sha256 tag, a folder as source, a source_run
    tag leading out of the experiments folder."""
    client = _client(mlflow_server)
    name = f"foreign-{uuid.uuid4().hex[:8]}"
    seed0 = experiments / "e" / "seed0"
    sha = sha256_of(seed0 / "model.pth")
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    client.log_artifact(run_id, str(seed0 / "model.pth"))
    client.log_artifacts(run_id, str(seed0), artifact_path="folder")
    artifacts = client.get_run(run_id).info.artifact_uri
    client.create_registered_model(name)
    for source, tags in [
        (f"{artifacts}/model.pth", {}),
        (f"{artifacts}/model.pth", {"sha256": "not a sha256"}),
        (f"{artifacts}/folder", {"sha256": sha}),
        (f"{artifacts}/model.pth", {"sha256": sha, "source_run": "../outside"}),
    ]:
        client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    registry = open_registry(elsewhere, mlflow_server.uri)
    for version, message in [(1, "'sha256' tag is missing"), (2, "'sha256' tag is missing"), (3, "is a folder")]:
        with pytest.raises(RegistryError, match=message):
            registry.resolve(f"models:/{name}/{version}")
        assert [p for p in elsewhere.rglob("*") if p.is_file()] == []  # nothing was downloaded

    # The registered bytes where the tag points, outside the experiments folder: never used from there.
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "model.pth").write_bytes((seed0 / "model.pth").read_bytes())
    version = registry.resolve(f"models:/{name}/4")
    assert version.run_dir is None and version.model_path.is_relative_to(elsewhere)
    assert sha256_of(version.model_path) == sha
