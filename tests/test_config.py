from pathlib import Path

import pytest

from image_classifier.config import TrainConfig
from image_classifier.errors import UserError


def make(**overrides):
    values = dict(experiment_name="e", run_name="r", experiments_folder=Path("/x"), dataset_folder=Path("/d"))
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("name", ["run_1", "a.b-c", "X9", ".hidden"])
def test_valid_names(name):
    assert make(run_name=name).run_dir == Path("/x/e") / name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", "sp ace", "ü", "a\\b"])
def test_invalid_names(name):
    with pytest.raises(UserError, match="invalid run name"):
        make(run_name=name)
    with pytest.raises(UserError, match="invalid experiment name"):
        make(experiment_name=name)


def test_dict_round_trip_and_result_fields():
    config = make(pretrained_model=Path("/x/e/r0/model.pth"), num_workers=5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["pretrained_model"] == "/x/e/r0/model.pth"
    assert "num_workers" not in config.result_fields() and "seed" in config.result_fields()
    assert make(dataset_folder=Path("rel")).result_fields()["dataset_folder"] == str(Path("rel").resolve())
