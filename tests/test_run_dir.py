import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classifier.errors import RunDirectoryError
from image_classifier.run_dir import CHECKPOINT_FILE, STAGING_MARKER, RunDirectory, finite_json, is_locked, sha256_of


def test_work_happens_in_a_sibling_published_by_one_rename(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.check_can_start()
    run_dir.create({"step": 0}, {"a": 1})
    assert sorted(p.name for p in run_dir.work_dir.iterdir()) == [CHECKPOINT_FILE, "run.json"]
    run_dir.save_checkpoint({"step": 3})
    assert run_dir.load_checkpoint() == {"step": 3}
    digest = run_dir.save_model({"w": torch.ones(2)})
    assert not run_dir.final_dir.exists()
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["r.incomplete"]

    assert run_dir.finish() == tmp_path / "e" / "r"
    assert sorted(p.name for p in run_dir.final_dir.iterdir()) == ["model.pth", "run.json"]
    assert sha256_of(run_dir.final_dir / "model.pth") == digest
    assert not run_dir.work_dir.exists()


def test_refusals(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        run_dir.open_for_resume()
    run_dir.create({"step": 0}, {})
    other = RunDirectory(tmp_path / "e" / "r")
    # The creator holds the lock: a second process (or object) can neither start nor resume the run.
    with pytest.raises(RunDirectoryError, match="another process is running"):
        other.check_can_start()
    with pytest.raises(RunDirectoryError, match="another process is running"):
        other.open_for_resume()
    run_dir.final_dir.mkdir()
    with pytest.raises(RunDirectoryError, match="already exists"):
        other.check_can_start()
    with pytest.raises(RunDirectoryError, match="is complete"):
        other.open_for_resume()


def test_an_unlocked_unfinished_run_is_offered_for_resume_and_locked_by_it(tmp_path):
    # A first process creates the run and exits: its lock goes with it.
    create = "import sys; from pathlib import Path; from image_classifier.run_dir import RunDirectory; "
    create += "RunDirectory(Path(sys.argv[1])).create({'step': 5}, {})"
    subprocess.run([sys.executable, "-c", create, str(tmp_path / "e" / "r")], check=True)
    resumer = RunDirectory(tmp_path / "e" / "r")
    assert not is_locked(resumer.work_dir)
    with pytest.raises(RunDirectoryError, match="unfinished run exists .*--resume"):
        resumer.check_can_start()
    assert resumer.open_for_resume() == {"step": 5}
    assert is_locked(resumer.work_dir)


def test_abandoned_staging_directories_are_cleaned_and_never_block(tmp_path):
    experiment = tmp_path / "e"
    abandoned = experiment / f"r{STAGING_MARKER}12345"
    abandoned.mkdir(parents=True)
    (abandoned / CHECKPOINT_FILE).write_bytes(b"half")
    run_dir = RunDirectory(experiment / "r")
    run_dir.check_can_start()
    run_dir.create({"step": 0}, {})
    assert sorted(p.name for p in experiment.iterdir()) == ["r.incomplete"]


def test_model_bytes_depend_only_on_the_weights(tmp_path):
    digests = set()
    for name in ("a", "b"):
        run_dir = RunDirectory(tmp_path / name / "r")
        run_dir.create({}, {})
        digests.add(run_dir.save_model({"w": torch.arange(4.0)}))
    assert len(digests) == 1


def test_json_is_strict_non_finite_numbers_become_null_with_a_warning(tmp_path, caplog):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    run_dir.write_json("metrics.json", {"loss": math.nan, "history": [{"train_loss": math.inf, "ok": 1.5}]})
    text = (run_dir.work_dir / "metrics.json").read_text()
    assert json.loads(text) == {"loss": None, "history": [{"train_loss": None, "ok": 1.5}]}
    assert "NaN" not in text and "Infinity" not in text
    assert "loss (nan)" in caplog.text and "history[0].train_loss (inf)" in caplog.text


def test_finite_json_leaves_finite_values_alone():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": -0.0}}
    assert finite_json(value) == (value, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to hold GPU tensors")
def test_a_gpu_model_is_saved_with_cpu_tensors(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    run_dir.save_model({"w": torch.ones(3, device="cuda")})
    saved = torch.load(run_dir.work_dir / "model.pth", weights_only=True)  # no map_location: as stored
    assert saved["w"].device.type == "cpu"


def test_every_output_reaches_the_disk_before_the_run_is_published(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.create({}, {})
    monkeypatch.setattr(os, "fsync", recording_fsync)
    run_dir.save_model({"w": torch.ones(2)})
    run_dir.write_json("metrics.json", {})
    run_dir.finish()
    # model.pth itself (a power cut after the rename must not leave it empty), the folder, then its parent.
    assert synced == ["model.pth", ".metrics.json.tmp", "r.incomplete", "e"]
