import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classifier.config import TrainConfig
from image_classifier.distributed import Runtime
from image_classifier.training_setup import SINGLE_THREAD_BELOW_BATCH, torch_threads_for


def config(**values) -> TrainConfig:
    return TrainConfig("e", "r", Path("experiments"), Path("data"), **values)


@pytest.mark.parametrize("batch_size", [1, 4, SINGLE_THREAD_BELOW_BATCH - 1])
def test_small_batches_train_on_one_thread(batch_size):
    assert torch_threads_for(config(batch_size=batch_size)) == 1


_THREADS_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from image_classifier.config import TrainConfig
from image_classifier.training_setup import torch_threads_for
configs = [TrainConfig("e", "r", Path("x"), Path("y"), **values) for values in json.loads(sys.argv[1])]
print(json.dumps([torch_threads_for(config) for config in configs]))
"""


def _python(code: str, *args: str, cores: str):
    # OMP_NUM_THREADS: how a scheduler (or torchrun) tells torch how many cores a process has.
    environment = {**os.environ, "OMP_NUM_THREADS": cores}
    return json.loads(
        subprocess.run(
            [sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True, check=True
        ).stdout
    )


@pytest.mark.parametrize("cores", ["1", "2"])
def test_large_batches_use_every_core_and_an_explicit_count_wins(cores):
    # "Every core": the count torch starts with in a fresh process given these cores, asked separately.
    every_core = _python("import torch; print(torch.get_num_threads())", cores=cores)
    assert every_core == 1 or cores == "2"
    batches = [{"batch_size": 4}, {"batch_size": 127}, {"batch_size": 128}, {"batch_size": 4096}]
    explicit = [{"batch_size": 4, "num_threads": 5}, {"batch_size": 512, "num_threads": 2}]
    chosen = _python(_THREADS_IN_A_FRESH_PROCESS, json.dumps(batches + explicit), cores=cores)
    assert chosen == [1, 1, every_core, every_core, 5, 2]


@pytest.mark.parametrize("size, world_size", [(300, 2), (301, 2), (10, 3), (7, 1)])
def test_ranks_take_disjoint_shards_of_one_permutation_like_one_process_at_the_global_batch(size, world_size):
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    shards = [Runtime(torch.device("cpu"), rank, world_size).shard(order) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1  # every rank takes as many steps
    padded = torch.cat([order, order[: (-size) % world_size]])
    assert sorted(torch.cat(shards).tolist()) == sorted(padded.tolist())
    batch = 4  # step k of all ranks together = items N*B*k ... N*B*(k+1)-1 of the permutation
    first_step = torch.cat([shard[:batch] for shard in shards])
    assert sorted(first_step.tolist()) == sorted(padded[: world_size * batch].tolist())


def test_test_shards_cover_every_image_once():
    shards = [Runtime(torch.device("cpu"), rank, 3).test_shard(97) for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(97))
    assert Runtime(torch.device("cpu")).test_shard(97) is None


def test_a_checkpoint_from_before_image_folders_resumes_with_the_new_fields_defaults():
    from image_classifier.checkpoint import check_arguments
    from image_classifier.errors import RunDirectoryError

    new_fields = ("image_size", "test_fraction", "skip_bad_images", "augment")
    older = {k: v for k, v in config().result_fields().items() if k not in new_fields}
    check_arguments(older, config().result_fields())  # no error
    with pytest.raises(RunDirectoryError, match="augment: False then, True now"):
        check_arguments(older, config(augment=True).result_fields())
    assert "cache_folder" not in config().result_fields()  # where the cache is never changes results
