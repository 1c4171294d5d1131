"""Total and per-class accuracy, mean loss and the confusion matrix on the test split, right for every batch
size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
    total_steps: int | None = None,
    after_step: Callable[[], None] | None = None,
) -> dict:
    """Return, over all `batches`:

    {"test_accuracy": %, "class_accuracy": {class: % or None}, "test_loss": mean cross-entropy per image,
    "confusion_matrix": [[count of class i predicted as j, ...], ...]} (rows true, columns predicted).

    Counts are accumulated per class with `bincount`, and the loss as a sum per image, so a last batch
    smaller than the others (a test set that the batch size does not divide) counts exactly like the rest.
    """
    model.eval()
    num_classes = len(classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    loss_sum = 0.0
    for images, labels in tqdm(batches, total=total_steps, desc="evaluate", unit="batch", leave=False, disable=None):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predictions = logits.argmax(dim=1).cpu()
        labels = labels.cpu()
        # One bincount over (true, predicted) pairs gives the whole matrix, flattened row by row.
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
        if after_step is not None:
            after_step()
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
        "test_loss": loss_sum / total_seen,
        "confusion_matrix": confusion.tolist(),
    }
