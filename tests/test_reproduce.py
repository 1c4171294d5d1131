"""The reproduce command's parts: the settings of older versions, job sizes, and what is compared."""

import dataclasses
import json
import re

import pytest
import torch

from image_classifier.config import TrainConfig
from image_classifier.errors import UserError
from image_classifier.reproduce import BEFORE_THE_OPTION, check_devices_for, recorded_config, reproduce
from image_classifier.run_comparison import metric_differences, same_weights, unrecorded_metrics
from image_classifier.secret import Secret
from tests.conftest import REPO_ROOT

OLDER_RUN = REPO_ROOT / "tests" / "fixtures" / "older_experiments" / "local_exp_test" / "run_1"


def _older_manifest(**arguments) -> dict:
    manifest = json.loads((OLDER_RUN / "run.json").read_text())
    manifest["arguments"].update(arguments)
    return manifest


def test_options_that_did_not_exist_yet_get_the_behaviour_of_their_time():
    config = recorded_config(_older_manifest(batch_size=16))
    assert (config.channels_last, config.eval_batch_size, config.amp, config.batch_size) == (False, 16, False, 16)
    assert config.pretrained_model_uri is None and config.learning_rate == 0.001


def test_every_option_added_since_version_1_0_0_says_what_runs_did_before_it():
    """A new TrainConfig field must say here what older runs (whose run.json lacks it) did instead."""
    known_then = json.loads((OLDER_RUN / "run.json").read_text())["arguments"].keys()
    assert {field.name for field in dataclasses.fields(TrainConfig)} - known_then <= BEFORE_THE_OPTION.keys()


def test_a_run_of_a_newer_version_or_a_damaged_record_is_refused_in_one_sentence():
    with pytest.raises(UserError, match=r"version 1\.0\.0 with options this version .* does not have: label_smoothing"):
        recorded_config(_older_manifest(label_smoothing=0.1))
    manifest = _older_manifest()
    del manifest["arguments"]["learning_rate"]
    with pytest.raises(UserError, match="run.json records no learning_rate"):
        recorded_config(manifest)


def test_a_torchrun_job_on_more_gpus_than_here_is_refused_with_what_to_run():
    config = recorded_config(_older_manifest(device="cuda"))
    check_devices_for(config, 2, gpus_here=2)
    check_devices_for(dataclasses.replace(config, device="cpu"), 4, gpus_here=0)  # gloo: any number of processes
    with pytest.raises(UserError) as refused:
        check_devices_for(config, 4, gpus_here=1)
    message = str(refused.value)
    assert "trained by 4 torchrun processes, one GPU each, and this machine has 1 GPU(s)" in message
    assert "-m image_classifier.main --experiment_name=local_exp_test" in message and "--db_pass" not in message


def test_metrics_are_compared_on_what_the_run_recorded():
    recorded = json.loads((OLDER_RUN / "metrics.json").read_text())
    reproduced = {
        **recorded,
        "test_loss": 0.2,
        "confusion_matrix": [[1]],
        "history": [{**entry, "test_loss": 0.1, "images_per_second": 9.0} for entry in recorded["history"]],
    }
    assert metric_differences(recorded, reproduced) == []
    assert unrecorded_metrics(recorded, reproduced) == ["confusion_matrix", "test_loss", "history.test_loss"]
    shorter = {**reproduced, "history": reproduced["history"][:1]}
    assert metric_differences(recorded, shorter)[0].startswith("history: ")
    longer = {**reproduced, "history": reproduced["history"] + reproduced["history"][-1:]}
    assert metric_differences(recorded, longer)[0].startswith("history: ")


def test_the_weights_decide_for_another_versions_file_layout(tmp_path):
    state = torch.load(OLDER_RUN / "model.pth", weights_only=True)
    torch.save({name: tensor for name, tensor in state.items()}, tmp_path / "model.pth")  # a plain dict now
    assert (tmp_path / "model.pth").read_bytes() != (OLDER_RUN / "model.pth").read_bytes()
    assert same_weights(OLDER_RUN / "model.pth", tmp_path / "model.pth")
    state["fc3.bias"] = state["fc3.bias"].clone()
    state["fc3.bias"][0] = torch.nextafter(state["fc3.bias"][0], torch.tensor(1.0))  # one bit of one weight
    torch.save(state, tmp_path / "model.pth")
    assert not same_weights(OLDER_RUN / "model.pth", tmp_path / "model.pth")
    (tmp_path / "model.pth").write_bytes(b"garbage")
    assert not same_weights(OLDER_RUN / "model.pth", tmp_path / "model.pth")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"world_size": 0}, "world_size 0 is not a number of processes"),
        ({"world_size": "100000"}, "world_size '100000' is not a number of processes"),
        ({"world_size": True}, "world_size True is not a number of processes"),
        ({"device": ["cpu"]}, "device ['cpu'] is not a device"),
        ({"arguments": None}, "records no arguments"),
    ],
)
def test_a_damaged_run_record_is_refused_before_any_work(tmp_path, change, message):
    run_dir = tmp_path / "experiments" / "local_exp_test" / "run_1"
    run_dir.mkdir(parents=True)
    manifest = json.loads((OLDER_RUN / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(UserError, match=re.escape(message)):
        reproduce(run_dir, Secret("x"))
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run_1"]


def test_a_damaged_or_missing_model_file_never_holds_the_same_weights(tmp_path):
    (tmp_path / "damaged.pth").write_bytes((OLDER_RUN / "model.pth").read_bytes()[:100])
    torch.save({"not": "tensors"}, tmp_path / "strings.pth")
    for other in ("damaged.pth", "strings.pth", "missing.pth"):
        assert not same_weights(OLDER_RUN / "model.pth", tmp_path / other)
