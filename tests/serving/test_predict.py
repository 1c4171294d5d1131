"""image_classifier_predict: the console script end to end, and its options and errors in process."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from image_classifier.serving.predict import build_parser, main
from tests.conftest import command, run_command


def test_the_command_equals_the_offline_evaluation(trained_run, offline, test_pngs):
    """A folder of the test split's PNGs through the console script: top-1 is the offline argmax, and all ten
    probabilities are the offline softmax."""
    result = run_command(
        [command("image_classifier_predict"), "--model", str(trained_run), "--format", "json", "--top_k", "10"]
        + ["--batch_size", "13", str(test_pngs[0].parent)],
        password=None,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [r["image"] for r in document["results"]] == [str(p) for p in test_pngs]
    for index, row in enumerate(document["results"]):
        assert row["predictions"][0]["label"] == offline.predicted[index]
        by_label = {p["label"]: p["probability"] for p in row["predictions"]}
        np.testing.assert_allclose([by_label[c] for c in range(10)], offline.probabilities[index], atol=1e-5)
    assert document["model"]["sha256"] == json.loads((trained_run / "run.json").read_text())["model_sha256"]


def test_an_unreadable_file_is_reported_and_the_others_still_classified(
    trained_run, offline, test_pngs, tmp_path, capsys
):
    (tmp_path / "a_broken.png").write_bytes(test_pngs[0].read_bytes()[:60])
    (tmp_path / "b_text.png").write_text("not an image")
    shutil.copy(test_pngs[1], tmp_path / "c_good.png")
    (tmp_path / "notes.txt").write_text("not an image suffix: skipped")
    code = main(
        ["--model", str(trained_run), "--format", "csv", "--top_k", "1", str(tmp_path), str(tmp_path / "gone.png")]
    )
    out, err = capsys.readouterr()
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["image"] for r in rows] == [
        str(tmp_path / n) for n in ("a_broken.png", "b_text.png", "c_good.png", "gone.png")
    ]
    assert (
        rows[0]["error"]
        and rows[1]["error"].startswith("not an image")
        and rows[3]["error"] == "no such file or folder"
    )
    assert rows[2]["class"] == offline.classes[offline.predicted[1]] and rows[2]["error"] == ""
    assert err.count("error: ") == 3


def test_table_output(trained_run, offline, test_pngs, capsys):
    assert main(["--model", str(trained_run), "--top_k", "2", str(test_pngs[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("IMAGE") and len(lines) == 2
    assert lines[1].startswith(str(test_pngs[0])) and f" {offline.classes[offline.predicted[0]]} 0." in lines[1]


def test_a_bare_model_needs_its_classes(trained_run, offline, test_pngs, tmp_path, capsys):
    bare = tmp_path / "weights.pth"
    shutil.copy(trained_run / "model.pth", bare)
    assert main(["--model", str(bare), str(test_pngs[0])]) == 1
    assert "error: no class names for" in capsys.readouterr().err

    names = ",".join(offline.classes)
    assert main(["--model", str(bare), "--classes", names, "--format", "json", str(test_pngs[0])]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["predictions"][0]["label"] == offline.predicted[0]

    (tmp_path / "metadata.json").write_text(json.dumps({"classes": list(offline.classes)}))
    assert main(["--model", str(bare), "--format", "json", str(test_pngs[0])]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]["predictions"][0]
    assert top["class"] == offline.classes[offline.predicted[0]]


@pytest.mark.parametrize(
    "model_files, extra, message",
    [
        ({}, [], "error: no model at"),
        ({"model.pth": b"not a checkpoint"}, ["--classes", "a,b"], "is not a PyTorch state_dict file"),
        ("copy", ["--classes", "a,b"], "the classes given (a, b) differ from those the run recorded"),
        ("tampered", [], "changed since its run recorded it"),
    ],
)
def test_model_problems_are_one_error_line(trained_run, test_pngs, tmp_path, capsys, model_files, extra, message):
    folder = tmp_path / "run"
    if model_files in ("copy", "tampered"):
        shutil.copytree(trained_run, folder)
        if model_files == "tampered":
            run = json.loads((folder / "run.json").read_text())
            run["model_sha256"] = "0" * 64
            (folder / "run.json").write_text(json.dumps(run))
    else:
        for name, content in model_files.items():
            folder.mkdir(exist_ok=True)
            (folder / name).write_bytes(content)
    assert (
        main(
            [
                "--model",
                str(folder / "model.pth" if model_files and model_files not in ("copy", "tampered") else folder),
                *extra,
                str(test_pngs[0]),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("older", [False, True])
def test_classes_named_in_run_json_win_over_metrics_order(trained_run, offline, test_pngs, tmp_path, capsys, older):
    """The model spec's classes, or for a run without a spec (an earlier version's) run.json's "classes": used
    when present (here reversed, to see it is used)."""
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder)
    run = json.loads((folder / "run.json").read_text())
    if older:
        del run["model_spec"]
        run["classes"] = list(reversed(offline.classes))
    else:
        run["model_spec"]["classes"] = list(reversed(offline.classes))
    (folder / "run.json").write_text(json.dumps(run))
    assert main(["--model", str(folder), "--format", "json", "--top_k", "1", str(test_pngs[0])]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]["predictions"][0]
    assert top["class"] == tuple(reversed(offline.classes))[offline.predicted[0]]


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "m"],  # no image
        ["--model", "m", "--classes", "a", "x.png"],
        ["--model", "m", "--classes", "a,a", "x.png"],
        ["--model", "m", "--classes", "a,b", "--metadata", "m.json", "x.png"],
        ["--model", "m", "--top_k", "0", "x.png"],
        ["--model", "m", "--format", "xml", "x.png"],
        ["--model", "m", "--mystery", "s3cret", "x.png"],
    ],
)
def test_usage_errors_exit_2_without_echoing_values(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "s3cret" not in capsys.readouterr().err


def test_every_option_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest
