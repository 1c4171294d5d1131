"""One epoch of training: SGD steps over shuffled mini-batches, with the notebook's loss printout."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from image_classifier.model.optimizer import MomentumSGD

logger = logging.getLogger(__name__)

LOG_EVERY_STEPS = 2000  # the notebook printed the mean loss of the last 2000 mini-batches


@dataclass
class EpochProgress:
    """Where an epoch stands; a checkpoint stores it so that an interrupted epoch resumes exactly."""

    epoch: int  # 1-based
    step: int = 0  # mini-batches done in this epoch
    loss_sum: float = 0.0  # over the whole epoch, for its mean training loss
    window_loss_sum: float = 0.0  # since the last `[epoch, step] loss:` line
    seconds: float = 0.0  # wall-clock time spent on this epoch, across resumes

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.step if self.step else float("nan")


def build_optimizer(model: nn.Module, learning_rate: float, momentum: float) -> MomentumSGD:
    # torch.optim.SGD(foreach=True)'s arithmetic bit for bit, in a few operations per step (optimizer.py).
    return MomentumSGD(model, lr=learning_rate, momentum=momentum)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass and the loss when `amp`; nothing otherwise."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: MomentumSGD | torch.optim.Optimizer,
    progress: EpochProgress,
    total_steps: int,
    after_step: Callable[[EpochProgress], None] | None = None,
    amp: bool = False,
    progress_bar: bool = True,
) -> EpochProgress:
    """Train on `batches` (the rest of the epoch from `progress.step`), updating `progress` in place.

    `after_step` runs after every optimiser step: the trainer uses it to checkpoint and to stop cleanly.
    `amp`: bf16 autocast for the forward pass and the loss (the backward pass follows their dtypes).
    `progress_bar`: False on the ranks of a torchrun job other than 0.
    """
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(
        batches,
        total=total_steps,
        initial=progress.step,
        desc=f"epoch {progress.epoch}",
        unit="batch",
        leave=False,
        disable=None if progress_bar else True,  # None: no bar when stderr is not a terminal (CI, Docker)
    )
    for images, labels in bar:
        optimizer.zero_grad()
        with autocast(images.device, amp):
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()

        loss_value = loss.item()
        progress.step += 1
        progress.loss_sum += loss_value
        progress.window_loss_sum += loss_value
        if progress.step % LOG_EVERY_STEPS == 0:
            logger.info(
                "[%d, %5d] loss: %.3f", progress.epoch, progress.step, progress.window_loss_sum / LOG_EVERY_STEPS
            )
            progress.window_loss_sum = 0.0
        if not bar.disable:  # formatting the postfix costs as much as a small kernel: only for a bar shown
            bar.set_postfix(loss=f"{progress.mean_loss:.3f}", refresh=False)
        if after_step is not None:
            after_step(progress)
    bar.close()
    return progress
