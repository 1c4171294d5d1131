"""Batches from memory-mapped splits, and --augment's crop and flip on whole batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from image_classifier.data.batches import BatchAugmentation, ImageSplit, iterate_batches, prepare_split, preprocess

CPU = torch.device("cpu")


def mapped_split(tmp_path, count: int = 10, size: int = 8) -> tuple[ImageSplit, np.ndarray]:
    images = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
    images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    mapped = np.load(tmp_path / "images.npy", mmap_mode="c")
    rows = np.array([7, 2, 5, 9])
    split = ImageSplit(torch.from_numpy(mapped), torch.tensor([0, 1, 0, 1]), torch.from_numpy(rows))
    return split, np.asarray(mapped)


def test_a_mapped_split_is_read_through_its_rows_and_never_copied_whole(tmp_path):
    split, array = mapped_split(tmp_path)
    assert prepare_split(split, CPU) is split
    batches = list(iterate_batches(split, 3, CPU, order=torch.tensor([3, 0, 1, 2])))
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    expected = preprocess(torch.from_numpy(array[[9, 7, 2, 5]].copy()))
    assert torch.equal(images, expected) and labels.tolist() == [1, 0, 1, 0]
    in_order = torch.cat([images for images, _ in iterate_batches(split, 3, CPU)])
    assert torch.equal(in_order, preprocess(torch.from_numpy(array[[7, 2, 5, 9]].copy())))


def test_mapped_batches_take_the_asked_memory_format(tmp_path):
    split, _ = mapped_split(tmp_path)
    images, _ = next(iterate_batches(split, 4, CPU, memory_format=torch.channels_last))
    assert images.is_contiguous(memory_format=torch.channels_last)


def crops_of(image: torch.Tensor, padding: int, fill: torch.Tensor) -> list[torch.Tensor]:
    """Every crop of the padded image, and its mirror: what one augmented image may be."""
    channels, height, width = image.shape
    padded = fill.reshape(channels, 1, 1).expand(channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, padding : padding + height, padding : padding + width] = image
    crops = [
        padded[:, top : top + height, left : left + width]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    ]
    return crops + [crop.flip(2) for crop in crops]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    padding=st.integers(0, 4),
    seed=st.integers(0, 2**63),
)
def test_each_augmented_image_is_a_crop_of_the_padded_image_or_its_mirror(n, height, width, padding, seed):
    images = torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed % 1000))
    fill = torch.tensor([-1.0, -2.0, -3.0]).reshape(1, 3, 1, 1)
    out = BatchAugmentation(torch.Generator().manual_seed(seed), padding)(images, fill)
    assert out.shape == images.shape
    for original, augmented in zip(images, out):
        assert any(torch.equal(augmented, crop) for crop in crops_of(original, padding, fill))


def test_augmentation_varies_and_is_exactly_repeatable_from_the_generator_state():
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fill = torch.zeros(1, 3, 1, 1)
    augment = BatchAugmentation(torch.Generator().manual_seed(1))
    state = augment.generator.get_state()
    first = augment(images, fill)
    second = augment(images, fill)
    assert not torch.equal(first, second) and not torch.equal(first, images)
    flipped_or_shifted = sum(not torch.equal(a, b) for a, b in zip(first, images))
    assert flipped_or_shifted > 48  # 1 in 162 images is left as it was (no shift, no flip)
    augment.generator.set_state(state)
    assert torch.equal(augment(images, fill), first) and torch.equal(augment(images, fill), second)


def test_black_padding_follows_the_normalisation_and_a_stopped_epoch_used_exactly_its_batches():
    split = ImageSplit(torch.full((10, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64))
    augment = BatchAugmentation(torch.Generator().manual_seed(3), padding=4)
    batches = iterate_batches(split, 4, CPU, augment=augment)
    images, _ = next(batches)
    assert set(images.unique().tolist()) <= {-1.0, 1.0} and (images == -1.0).any()  # black: (0 - 0.5) / 0.5
    state_after_one = augment.generator.get_state()
    replay = BatchAugmentation(torch.Generator().manual_seed(3), padding=4)
    replay(torch.zeros(4, 3, 4, 4), torch.zeros(1, 3, 1, 1))
    assert torch.equal(state_after_one, replay.generator.get_state())


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_augmented_batches_of_a_prepared_split_keep_its_layout(memory_format):
    split = ImageSplit(torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8), torch.arange(8))
    prepared = prepare_split(split, CPU, memory_format)
    augment = BatchAugmentation(torch.Generator().manual_seed(0))
    images, labels = next(iterate_batches(prepared, 8, CPU, augment=augment, memory_format=memory_format))
    assert images.is_contiguous(memory_format=memory_format) and labels.tolist() == list(range(8))
