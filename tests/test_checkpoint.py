"""What --resume checks, on plain records: no torch, no GPU needed to test the GPU rules."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_classifier.checkpoint import (
    CHECKPOINT_FORMAT,
    check_arguments,
    check_dataset,
    check_environment,
    check_world_size,
    open_checkpoint,
    started_config,
)
from image_classifier.config import TrainConfig
from image_classifier.errors import RunDirectoryError

H200 = {"name": "NVIDIA H200", "driver": "570.86.15"}


def environment(device: str = "cpu", gpu: dict | None = None, **changes) -> dict:
    """A run.json environment record as the trainer writes it (values from a real run)."""
    record = {
        "device": device,
        "gpu": gpu,
        "code": {"commit": "115f1d8", "sha256": "72cf31d9"},
        "versions": {"image_classifier": "0.1.dev77", "python": "3.11.7", "torch": "2.14.1+cu130"},
        "platform": {"system": "Linux", "machine": "x86_64", "cuda": "13.0", "cpu_capability": "AVX512"},
        "git": {"commit": "115f1d8", "dirty": False},
        "lock_files": None,
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            record[section] = {**record[section], name: value}
        else:
            record[section] = value
    return record


def config(**values) -> TrainConfig:
    return TrainConfig("e", "r", Path("/x/experiments"), Path("/x/data"), **values)


# --- the environment: device type and GPU model, compared rank by rank ---


@given(started_on=st.integers(0, 7), resumed_on=st.integers(0, 7))
def test_a_gpu_of_the_same_model_at_any_index_resumes_without_a_word(started_on, resumed_on):
    # Under torchrun run.json holds rank 0's record (cuda:0); rank 3 compares its own cuda:3 with it.
    recorded = environment(f"cuda:{started_on}", H200)
    assert check_environment(recorded, environment(f"cuda:{resumed_on}", H200), force=False) == ([], [])
    assert check_environment(recorded, environment("cuda", H200), force=False) == ([], [])


def test_another_gpu_model_is_refused_like_another_device_unless_forced():
    recorded = environment("cuda:0", H200)
    other_model = environment("cuda:1", {"name": "NVIDIA A100-SXM4-80GB", "driver": "570.86.15"})
    with pytest.raises(RunDirectoryError) as refused:
        check_environment(recorded, other_model, force=False)
    message = str(refused.value)
    assert "gpu.name: 'NVIDIA H200' -> 'NVIDIA A100-SXM4-80GB'" in message and "--force" in message
    assert "device:" not in message  # cuda then, cuda now: the index is no difference

    changes, forced = check_environment(recorded, other_model, force=True)
    assert forced == changes == ["gpu.name: 'NVIDIA H200' -> 'NVIDIA A100-SXM4-80GB'"]

    with pytest.raises(RunDirectoryError, match=r"device: 'cuda' -> 'cpu'; gpu\.name: 'NVIDIA H200' -> None"):
        check_environment(recorded, environment("cpu"), force=False)


def test_another_driver_or_cpu_capability_is_only_warned_about():
    recorded = environment("cuda:0", H200)
    now = environment("cuda:0", {**H200, "driver": "580.65.06"}, platform__cpu_capability="AVX2")
    changes, forced = check_environment(recorded, now, force=False)
    assert changes == [
        "gpu.driver: '570.86.15' -> '580.65.06'",
        "platform.cpu_capability: 'AVX512' -> 'AVX2'",
    ]
    assert forced == []


def test_torch_version_and_code_are_refused_on_the_cpu_too():
    now = environment(versions__torch="2.15.0", code__sha256="0000")
    with pytest.raises(RunDirectoryError) as refused:
        check_environment(environment(), now, force=False)
    assert "code.sha256: '72cf31d9' -> '0000'; versions.torch: '2.14.1+cu130' -> '2.15.0'" in str(refused.value)


def test_a_run_recorded_before_gpus_were_recorded_compares_on_the_cpu():
    older = environment()
    del older["gpu"]  # run.json of a version that had no "gpu" record: it ran on the CPU here
    assert check_environment(older, environment(), force=False) == ([], [])


# --- the arguments, and models:/ versions that are never resolved again ---


def test_a_models_uri_resumes_with_the_version_its_start_resolved_whatever_the_alias_says_now():
    started = config(
        pretrained_model=Path("/x/experiments/e/seed1/model.pth"),
        pretrained_model_uri="models:/cifar-net@production",
        pretrained_model_version=2,
    )
    resumed = config(pretrained_model_uri="models:/cifar-net@production")  # as main() builds it: unresolved
    check_arguments(started.result_fields(), resumed.result_fields())
    assert started_config(resumed, started.result_fields()) == started

    with pytest.raises(RunDirectoryError, match="pretrained_model_uri: 'models:/cifar-net@production' then, "):
        check_arguments(
            started.result_fields(), config(pretrained_model_uri="models:/cifar-net@staging").result_fields()
        )
    # A file instead of the URI is another argument, not the same one resolved.
    with pytest.raises(RunDirectoryError, match="pretrained_model_uri"):
        check_arguments(started.result_fields(), config(pretrained_model=Path("/x/m.pth")).result_fields())


def test_plain_arguments_are_compared_as_before():
    check_arguments(config().result_fields(), config(num_workers=0, checkpoint_every=3).result_fields())
    with pytest.raises(RunDirectoryError, match=r"learning_rate: 0\.001 then, 0\.01 now, seed: 0 then, 5 now"):
        check_arguments(config().result_fields(), config(learning_rate=0.01, seed=5).result_fields())
    with pytest.raises(RunDirectoryError, match="pretrained_model: '/a.pth' then, '/b.pth' now"):
        check_arguments(
            config(pretrained_model=Path("/a.pth")).result_fields(),
            config(pretrained_model=Path("/b.pth")).result_fields(),
        )
    plain = config(pretrained_model=Path("/a.pth"))
    assert started_config(plain, plain.result_fields()) is plain


def test_the_job_size_must_match():
    check_world_size(2, 2)
    with pytest.raises(RunDirectoryError, match=r"started by 2 process\(es\) and is resumed by 1"):
        check_world_size(2, 1)


def test_a_changed_dataset_is_refused_naming_the_files():
    recorded = {"metadata.json": "a", "cifar-10-batches-py/data_batch_1": "b", "cifar-10-batches-py/test_batch": "c"}
    check_dataset(recorded, dict(recorded), Path("data"))
    now = {"metadata.json": "a", "cifar-10-batches-py/data_batch_1": "B", "cifar-10-batches-py/data_batch_2": "d"}
    with pytest.raises(RunDirectoryError) as refused:
        check_dataset(recorded, now, Path("data"))
    assert str(refused.value).startswith(
        "the dataset in data changed since the interrupted run (cifar-10-batches-py/data_batch_1 changed, "
        "cifar-10-batches-py/test_batch is gone, cifar-10-batches-py/data_batch_2 is new)"
    )


def test_the_checks_need_no_torch():
    code = "import sys, image_classifier.checkpoint; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


class _Runtime:
    """A job as `open_checkpoint` sees it: its size, this process's rank, and rank 0's broadcast."""

    def __init__(self, world_size: int = 1, rank: int = 0, broadcast=None) -> None:
        self.world_size, self.rank, self._broadcast = world_size, rank, broadcast

    def is_main_process(self) -> bool:
        return self.rank == 0

    def broadcast_from_main(self, value):
        return value if self.rank == 0 else self._broadcast


class _RunDirectory:
    """A run directory that records what is asked of it and hands out `checkpoint` on resume."""

    def __init__(self, checkpoint: dict | None = None) -> None:
        self.checkpoint, self.calls = checkpoint, []

    def check_can_start(self) -> None:
        self.calls.append("check_can_start")

    def open_for_resume(self) -> dict:
        self.calls.append("open_for_resume")
        return self.checkpoint


def _recorded(started: TrainConfig, **changes) -> dict:
    return {"format": CHECKPOINT_FORMAT, "config": started.result_fields(), "world_size": 1, **changes}


def test_a_new_run_checks_that_it_can_start_and_has_no_checkpoint():
    run_dir = _RunDirectory()
    assert open_checkpoint(config(), run_dir, _Runtime()) is None
    assert run_dir.calls == ["check_can_start"]


def test_a_resume_checks_format_arguments_and_job_size_in_that_order():
    resumed = config(resume=True)
    good = _recorded(resumed)
    assert open_checkpoint(resumed, _RunDirectory(good), _Runtime()) is good
    # A checkpoint from before torchrun support has no world_size: it was written by one process.
    legacy = {key: value for key, value in good.items() if key != "world_size"}
    assert open_checkpoint(resumed, _RunDirectory(legacy), _Runtime()) is legacy
    for damaged, message in [
        (_recorded(resumed, format=1, world_size=4, config={}), "format 1 is not"),
        (_recorded(resumed, world_size=4, config={**good["config"], "seed": 7}), "seed: 7 then, 0 now"),
        (_recorded(resumed, world_size=4), "started by 4 process"),
    ]:
        with pytest.raises(RunDirectoryError, match=message):
            open_checkpoint(resumed, _RunDirectory(damaged), _Runtime())


def test_under_torchrun_only_rank_0_touches_the_run_and_every_rank_gets_its_checkpoint():
    resumed = config(resume=True)
    recorded = _recorded(resumed, world_size=2)
    run_dir = _RunDirectory(recorded)
    assert open_checkpoint(resumed, run_dir, _Runtime(world_size=2, rank=1, broadcast=recorded)) is recorded
    assert open_checkpoint(config(), run_dir, _Runtime(world_size=2, rank=1)) is None
    assert run_dir.calls == []


def test_opening_and_checking_a_resume_imports_no_torch():
    """Rank 0 refuses a bad resume before the trainer builds anything: those checks run without torch."""
    code = """
import sys
from pathlib import Path
from image_classifier.checkpoint import CHECKPOINT_FORMAT, open_checkpoint
from image_classifier.config import TrainConfig
from image_classifier.errors import RunDirectoryError

class Runtime:
    world_size = 2
    def is_main_process(self): return True
    def broadcast_from_main(self, value): return value

class RunDirectory:
    def open_for_resume(self):
        return {"format": CHECKPOINT_FORMAT, "config": resumed.result_fields(), "world_size": 1}

resumed = TrainConfig("e", "r", Path("experiments"), Path("data"), resume=True)
try:
    open_checkpoint(resumed, RunDirectory(), Runtime())
except RunDirectoryError as refused:
    print("refused:", "started by 1 process" in str(refused))
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["refused: True", "False"]
