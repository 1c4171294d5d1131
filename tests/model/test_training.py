import logging

import torch

from image_classifier.data.batches import ImageSplit, iterate_batches
from image_classifier.model import training
from image_classifier.model.model import Net
from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch


def _split(size=64):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSplit(images=images, labels=torch.randint(0, 10, (size,), generator=generator))


def _loss(model, split):
    images, labels = next(iterate_batches(split, len(split), torch.device("cpu")))
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(images), labels).item()


def test_training_lowers_the_loss_and_counts_steps():
    torch.manual_seed(0)
    model, split = Net(), _split()
    optimizer = build_optimizer(model, learning_rate=0.01, momentum=0.9)
    before = _loss(model, split)
    progress = EpochProgress(epoch=1)
    for _ in range(3):
        train_one_epoch(model, iterate_batches(split, 8, torch.device("cpu")), optimizer, progress, 8)
    assert progress.step == 24 and progress.mean_loss > 0
    assert _loss(model, split) < before


def test_notebook_loss_line_and_after_step(monkeypatch, caplog):
    monkeypatch.setattr(training, "LOG_EVERY_STEPS", 4)
    seen = []
    progress = EpochProgress(epoch=3)
    model = Net()
    with caplog.at_level(logging.INFO):
        train_one_epoch(
            model,
            iterate_batches(_split(40), 4, torch.device("cpu")),
            build_optimizer(model, 0.001, 0.9),
            progress,
            10,
            after_step=lambda p: seen.append(p.step),
        )
    assert seen == list(range(1, 11))
    lines = [r.getMessage() for r in caplog.records if "loss:" in r.getMessage()]
    assert [line.split(" loss")[0] for line in lines] == ["[3,     4]", "[3,     8]"]
