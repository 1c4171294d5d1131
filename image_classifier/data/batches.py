"""Splits held in memory or memory-mapped, cut into mini-batches, normalised and augmented on the device.

A CIFAR-10 split is read into memory; the trainer normalises it once, on its device (`prepare_split`),
exactly as the notebook's `ToTensor()` + `Normalize((0.5,) * 3, (0.5,) * 3)` did, and then only slices
batches from it. A prepared image folder stays a memory-mapped uint8 array (`prepared.py`): each batch is
gathered from the mapping, moved to the device and normalised there, so the process holds one batch at a
time whatever the dataset's size. No workers, no per-image PIL work.

Augmentation (`--augment`) works on whole batches on the device: a random crop of the image padded by
4 black pixels on every side, then a horizontal flip of half the images, as torchvision's
`RandomCrop(size, padding=4)` + `RandomHorizontalFlip()` do per image. The offsets and flips are drawn
on the CPU from the run's own seeded generator (the same draws on every device), one draw per training
batch, so the generator's state in a checkpoint resumes them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from image_classifier.normalization import NOTEBOOK_MEAN, NOTEBOOK_STD, normalize

AUGMENT_PADDING = 4  # pixels on every side: torchvision's CIFAR-10 recipes (RandomCrop(32, padding=4))


@dataclass(frozen=True)
class ImageSplit:
    """One split: `images` N x 3 x S x S (uint8 as read or mapped, or float32 once prepared), `labels` int64.

    `rows`, when set, maps the split's positions to rows of `images`: a split of a prepared image folder is
    a subset of one memory-mapped array shared by both splits.
    """

    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def mapped(self) -> bool:
        """Whether `images` is a memory-mapped file, to be read batch by batch, never copied whole."""
        return self.rows is not None


def preprocess(
    images: torch.Tensor, mean: Sequence[float] = NOTEBOOK_MEAN, std: Sequence[float] = NOTEBOOK_STD
) -> torch.Tensor:
    """uint8 N x 3 x S x S -> float32: ToTensor() then Normalize(mean, std), by default the notebook's
    Normalize(0.5, 0.5) to [-1, 1] (see `normalization.py`).

    The same operations in the same order as torchvision's, so the values are bit-for-bit identical.
    """
    return normalize(images, mean, std)


def prepare_split(
    split: ImageSplit,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    mean: Sequence[float] = NOTEBOOK_MEAN,
    std: Sequence[float] = NOTEBOOK_STD,
) -> ImageSplit:
    """The split normalised once and held on `device`: batches are then slices, with no work per batch.

    The full CIFAR-10 training set takes 50,000 x 3,072 x 4 bytes = 600 MB as float32. The values are those
    that `preprocess` gives per batch, bit for bit (the same element-wise operations). A memory-mapped split
    is returned as it is: copying it whole is what mapping it avoids.
    """
    if split.mapped:
        return split
    if split.images.dtype != torch.uint8:
        raise ValueError(f"prepare_split takes a split as read (uint8), not {split.images.dtype}")
    # Laid out once as uint8 (a quarter of the bytes), then `preprocess`'s operations in place: the same
    # values bit for bit, without three more full-size temporaries (about 6x faster at the trainer's start).
    images = split.images.to(device).contiguous(memory_format=memory_format).to(torch.float32)
    images.div_(255).sub_(images.new_tensor(mean).view(-1, 1, 1)).div_(images.new_tensor(std).view(-1, 1, 1))
    return ImageSplit(images=images, labels=split.labels.to(device))


def num_batches(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


class BatchAugmentation:
    """Random crop with padding and horizontal flip of whole batches, from one seeded CPU generator."""

    def __init__(self, generator: torch.Generator, padding: int = AUGMENT_PADDING) -> None:
        self.generator = generator
        self.padding = padding

    def record(self) -> dict:
        """run.json's description of what is applied to every training batch."""
        return {"random_crop_padding": self.padding, "padding_fill": "black", "horizontal_flip": 0.5}

    def __call__(self, images: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """Crop and flip normalised `images` (N x C x H x W); `fill` (1 x C x 1 x 1) is black, normalised."""
        n, channels, height, width = images.shape
        pad = self.padding
        # Drawn on the CPU in a fixed order (offsets, then flips): the same augmentation on every device.
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=self.generator).to(images.device)
        flips = torch.randint(0, 2, (n,), generator=self.generator).bool().to(images.device)
        padded = fill.to(images.device, images.dtype).expand(n, channels, height + 2 * pad, width + 2 * pad).clone()
        padded[:, :, pad : pad + height, pad : pad + width] = images
        rows = offsets[:, :1] + torch.arange(height, device=images.device)  # N x H
        columns = offsets[:, 1:] + torch.arange(width, device=images.device)  # N x W
        columns = torch.where(flips[:, None], columns.flip(1), columns)  # a flip reads the columns backwards
        batch = torch.arange(n, device=images.device)[:, None, None]
        # Advanced indices around a slice go first: N x H x W x C, i.e. channels-last once permuted back.
        return padded[batch, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    device: torch.device,
    order: torch.Tensor | None = None,
    start_batch: int = 0,
    mean: Sequence[float] = NOTEBOOK_MEAN,
    std: Sequence[float] = NOTEBOOK_STD,
    augment: BatchAugmentation | None = None,
    memory_format: torch.memory_format | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield preprocessed (images, labels) mini-batches in `order` (default: as stored), from `start_batch`.

    The last batch is smaller when `batch_size` does not divide the split, like DataLoader's default.
    A prepared (float) split is only sliced; a uint8 one is normalised batch by batch (`mean`, `std`) on
    `device`, and laid out in `memory_format` when given. `augment` draws its randomness as each batch is
    produced, so a consumer that stops after k batches has used exactly k batches' draws; it pads with
    black as the same `mean` and `std` normalise it.
    """
    positions = range(start_batch * batch_size, len(split) if order is None else len(order), batch_size)
    if order is not None:
        order = order.to(split.labels.device)
    fill = None
    for start in positions:
        if order is None:
            indices = slice(start, start + batch_size)
            labels = split.labels[indices]
        else:
            indices = order[start : start + batch_size]
            labels = split.labels[indices]
        if split.rows is not None:
            indices = split.rows[indices]
        images = split.images[indices]
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if not images.is_floating_point():
            images = preprocess(images, mean, std)
            if memory_format is not None:
                images = images.contiguous(memory_format=memory_format)
        if augment is not None:
            if fill is None:  # black, as the normalisation maps it (per channel when it is per channel)
                fill = preprocess(torch.zeros(1, images.shape[1], 1, 1, dtype=torch.uint8, device=device), mean, std)
            images = augment(images, fill)
            if memory_format is not None:
                images = images.contiguous(memory_format=memory_format)
        yield images, labels
