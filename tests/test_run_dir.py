import pytest
import torch

from image_classifier.errors import RunDirectoryError
from image_classifier.run_dir import CHECKPOINT_FILE, RunDirectory, sha256_of


def test_work_happens_in_a_sibling_published_by_one_rename(tmp_path):
    run_dir = RunDirectory(tmp_path / "e" / "r")
    run_dir.check_can_start()
    run_dir.create()
    run_dir.write_json("run.json", {"a": 1})
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
        run_dir.check_can_resume()
    run_dir.create()
    with pytest.raises(RunDirectoryError, match="unfinished run exists .*--resume"):
        run_dir.check_can_start()
    run_dir.final_dir.mkdir()
    with pytest.raises(RunDirectoryError, match="already exists"):
        run_dir.check_can_start()
    (run_dir.work_dir / CHECKPOINT_FILE).write_bytes(b"")
    with pytest.raises(RunDirectoryError, match="is complete"):
        run_dir.check_can_resume()


def test_model_bytes_depend_only_on_the_weights(tmp_path):
    digests = set()
    for name in ("a", "b"):
        run_dir = RunDirectory(tmp_path / name / "r")
        run_dir.create()
        digests.add(run_dir.save_model({"w": torch.arange(4.0)}))
    assert len(digests) == 1
