"""Total and per-class accuracy, mean loss and the confusion matrix on the test split, right for every batch
size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
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
    """Return, over all `batches`:

    {"test_accuracy": %, "class_accuracy": {class: % or None}, "test_loss": mean cross-entropy per image,
    "confusion_matrix": [[count of class i predicted as j, ...], ...]} (rows true, columns predicted).

    Counts are accumulated per class with `bincount`, and the loss as a sum per image, so a last batch
    smaller than the others (a test set that the batch size does not divide) counts exactly like the rest.
    Under torchrun each rank sees its shard of the test set and `sum_counts` adds up every rank's sums.
    """
    model.eval()
    num_classes = len(classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    bar = tqdm(
        batches, total=total_steps, desc="evaluate", unit="batch", leave=False, disable=None if progress_bar else True
    )
    for images, labels in bar:
        with autocast(images.device, amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").cpu().double()
        predictions = logits.argmax(dim=1).cpu()
        labels = labels.cpu()
        # One bincount over (true, predicted) pairs gives the whole matrix, flattened row by row.
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
        if after_step is not None:
            after_step()
    if sum_counts is not None:
        confusion, loss_sum = sum_counts(confusion), sum_counts(loss_sum)
    confusion = confusion.view(num_classes, num_classes)
    seen, correct = confusion.sum(dim=1), confusion.diagonal()
    total_seen = int(seen.sum())
    if total_seen == 0:
        raise ValueError("evaluate() got no images")
    # None (JSON null) for a class with no test image: NaN would not be valid JSON, nor equal to itself.
    class_accuracy = {
        name: 100.0 * int(correct[index]) / int(seen[index]) if seen[index] else None
        for index, name in enumerate(classes)
    }
    return {
        "test_accuracy": 100.0 * int(correct.sum()) / total_seen,
        "class_accuracy": class_accuracy,
        "test_loss": float(loss_sum) / total_seen,
        "confusion_matrix": confusion.tolist(),
    }
