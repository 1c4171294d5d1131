"""The parts a training run is built from, made from its `TrainConfig`: threads, data, model, generators.

`trainer.py` calls these in a fixed order (data, then seeding, then the model): the order is part of what
makes a run's bytes the same every time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from image_classifier.checkpoint import check_dataset
from image_classifier.config import TrainConfig
from image_classifier.data.batches import prepare_split
from image_classifier.data.data import DataOptions, TrainTestData, get_train_test_data
from image_classifier.data.database import load_settings
from image_classifier.distributed import Runtime, check_same_data
from image_classifier.errors import ModelSpecError
from image_classifier.model.architectures import build_model, check_deterministic_kernels, check_trains_on_one_image
from image_classifier.model.spec import ModelSpec, new_spec
from image_classifier.secret import Secret

# Below this batch size a new run trains on one CPU thread, from it on every core. On the quiet
# 2-core machine 2 threads trained 1.7-1.8x faster than 1 at batch 128 and 512, and 13 % slower at batch 4
# (too little work per kernel to share). While other work loads the machine, 2 threads are 3x to 30x
# slower at every batch size (each kernel waits for a descheduled partner): `--num_threads 1` there.
SINGLE_THREAD_BELOW_BATCH = 128


def torch_threads_for(config: TrainConfig) -> int:
    """The CPU thread count a new run uses: --num_threads, or one chosen from the batch size."""
    if config.num_threads:
        return config.num_threads
    return 1 if config.batch_size < SINGLE_THREAD_BELOW_BATCH else torch.get_num_threads()


def memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def data_options(config: TrainConfig) -> DataOptions:
    return DataOptions(
        image_size=config.image_size,
        test_fraction=config.test_fraction,
        seed=config.seed,
        skip_bad_images=config.skip_bad_images,
        cache_folder=config.cache_folder,
    )


def augment_generator(seed: int, rank: int) -> torch.Generator:
    """--augment's own CPU generator: from the run's seed, distinct per torchrun rank (each augments its shard)."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(derived)


def load_data(
    config: TrainConfig, db_password: Secret, runtime: Runtime, checkpoint: dict | None
) -> tuple[TrainTestData, ModelSpec]:
    """The run's data on its device, and the model spec it implies; a resumed run's `checkpoint` (None for a
    new run) holds the dataset hash the data read now must match."""
    data = get_train_test_data(config.dataset_folder, load_settings(), db_password, data_options(config))
    check_same_data(runtime, data.fingerprint)
    if checkpoint is not None:
        check_dataset(checkpoint["dataset_sha256"], data.fingerprint, config.dataset_folder)
    spec = new_spec(config.architecture, _image_size(data), data.classes)
    data = dataclasses.replace(
        data,
        train=prepare_split(data.train, runtime.device, memory_format(config), spec.mean, spec.std),
        test=prepare_split(data.test, runtime.device, memory_format(config), spec.mean, spec.std),
    )
    return data, spec


def model_on_device(
    config: TrainConfig, spec: ModelSpec, runtime: Runtime, train_size: int
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model (from the RNG as seeded now) on its device, and what training steps call: the model, or its
    DistributedDataParallel wrapper under torchrun."""
    device = runtime.device
    model = build_model(spec)
    if len(runtime.shard(torch.arange(train_size))) % config.batch_size == 1:
        check_trains_on_one_image(model, spec)
    model = model.to(device).to(memory_format=memory_format(config))
    if config.deterministic and device.type == "cuda":
        check_deterministic_kernels(model, spec, device)
    return model, DistributedDataParallel(model) if runtime.distributed else model


def _image_size(data: TrainTestData) -> int:
    """The side of the dataset's images: the size the model is built for and served at."""
    height, width = data.train.images.shape[-2:]
    if height != width:
        raise ModelSpecError(f"the dataset's images are {width} x {height} pixels; models take square images")
    return int(height)
