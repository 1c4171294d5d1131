"""Total and per-class accuracy on the test split, right for every batch size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from image_classifier.model.training import autocast


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
    total_steps: int | None = None,
    after_step: Callable[[], None] | None = None,
    amp: bool = False,
    sum_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress_bar: bool = True,
) -> dict:
    """Return {"test_accuracy": %, "class_accuracy": {class: % or None}} over all `batches`.

    Counts are accumulated per class with `bincount`, so a last batch smaller than the others (a test set
    that the batch size does not divide) counts exactly like the rest. Under torchrun each rank sees its
    shard of the test set and `sum_counts` adds the counts of every rank.
    """
    model.eval()
    num_classes = len(classes)
    correct = torch.zeros(num_classes, dtype=torch.int64)
    seen = torch.zeros(num_classes, dtype=torch.int64)
    bar = tqdm(
        batches, total=total_steps, desc="evaluate", unit="batch", leave=False, disable=None if progress_bar else True
    )
    for images, labels in bar:
        with autocast(images.device, amp):
            predictions = model(images).argmax(dim=1)
        labels = labels.cpu()
        seen += torch.bincount(labels, minlength=num_classes)
        correct += torch.bincount(labels[predictions.cpu() == labels], minlength=num_classes)
        if after_step is not None:
            after_step()
    if sum_counts is not None:
        correct, seen = sum_counts(torch.stack([correct, seen])).unbind()
    total_seen = int(seen.sum())
    if total_seen == 0:
        raise ValueError("evaluate() got no images")
    # None (JSON null) for a class with no test image: NaN would not be valid JSON, nor equal to itself.
    class_accuracy = {
        name: 100.0 * int(correct[index]) / int(seen[index]) if seen[index] else None
        for index, name in enumerate(classes)
    }
    return {"test_accuracy": 100.0 * int(correct.sum()) / total_seen, "class_accuracy": class_accuracy}
