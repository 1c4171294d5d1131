import pytest
import torch

from image_classifier.data.batches import ImageSplit, iterate_batches
from image_classifier.model.validation import evaluate


class FixedPredictions(torch.nn.Module):
    """Predicts the class stored in the first pixel of each image, so accuracy is known in advance."""

    def forward(self, images):
        classes = ((images[:, 0, 0, 0] + 1) / 2 * 255).round().long()
        return torch.nn.functional.one_hot(classes, 3).float()


@pytest.mark.parametrize("batch_size", [1, 4, 7, 10, 97, 200])
def test_accuracy_is_right_for_every_batch_size(batch_size):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (97,), generator=generator)
    predicted = torch.where(torch.rand(97, generator=generator) < 0.6, labels, (labels + 1) % 3)
    images = predicted.to(torch.uint8).view(97, 1, 1, 1).expand(97, 3, 32, 32).contiguous()
    split = ImageSplit(images=images, labels=labels)

    metrics = evaluate(FixedPredictions(), iterate_batches(split, batch_size, torch.device("cpu")), ["a", "b", "c"])

    correct = predicted == labels
    assert metrics["test_accuracy"] == pytest.approx(100 * correct.float().mean().item())
    for index, name in enumerate("abc"):
        in_class = labels == index
        expected = 100 * correct[in_class].float().mean().item()
        assert metrics["class_accuracy"][name] == pytest.approx(expected)
    assert list(metrics["class_accuracy"]) == ["a", "b", "c"]


def test_a_class_absent_from_the_test_set_has_no_accuracy():
    labels = torch.tensor([0, 0, 1])
    split = ImageSplit(images=labels.to(torch.uint8).view(3, 1, 1, 1).expand(3, 3, 32, 32).contiguous(), labels=labels)
    metrics = evaluate(FixedPredictions(), iterate_batches(split, 2, torch.device("cpu")), ["a", "b", "c"])
    assert metrics["class_accuracy"] == {"a": 100.0, "b": 100.0, "c": None}
    assert metrics["test_accuracy"] == 100.0


class FixedLogits(torch.nn.Module):
    """Logits that depend on the image only, so the whole test set's loss can be computed in one go."""

    def forward(self, images):
        return images[:, :, 0, 0] * torch.tensor([1.0, -2.0, 0.5])


@pytest.mark.parametrize("batch_size", [1, 7, 97, 200])
def test_confusion_matrix_and_test_loss_are_right_for_every_batch_size(batch_size):
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (97,), generator=generator)
    images = torch.randint(0, 256, (97, 3, 32, 32), generator=generator, dtype=torch.uint8)
    split = ImageSplit(images=images, labels=labels)
    model = FixedLogits()

    metrics = evaluate(model, iterate_batches(split, batch_size, torch.device("cpu")), ["a", "b", "c"])

    all_images = next(iter(iterate_batches(split, 97, torch.device("cpu"))))[0]
    logits = model(all_images)
    predicted = logits.argmax(dim=1)
    expected = [[int(((labels == t) & (predicted == p)).sum()) for p in range(3)] for t in range(3)]
    assert metrics["confusion_matrix"] == expected
    assert sum(map(sum, expected)) == 97
    assert metrics["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    diagonal = sum(expected[i][i] for i in range(3))
    assert metrics["test_accuracy"] == pytest.approx(100 * diagonal / 97)


def test_the_eval_batch_size_does_not_change_the_counts(dataset):
    """A trained model evaluated at batch 4 (the training batch size) and at 1000 counts the same images right."""
    from image_classifier.data.batches import prepare_split
    from image_classifier.data.cifar import load_dataset
    from image_classifier.model.model import Net
    from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch

    data = load_dataset(dataset)
    train, test = (prepare_split(split, torch.device("cpu"), torch.channels_last) for split in (data.train, data.test))
    torch.manual_seed(0)
    model = Net().to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, 0.01, 0.9)
    train_one_epoch(model, iterate_batches(train, 4, torch.device("cpu")), optimizer, EpochProgress(epoch=1), 75)

    at_4, at_1000 = (
        evaluate(model, iterate_batches(test, size, torch.device("cpu")), data.classes) for size in (4, 1000)
    )
    for key in ("test_accuracy", "class_accuracy", "confusion_matrix"):
        assert at_4[key] == at_1000[key]
    assert at_4["test_loss"] == pytest.approx(at_1000["test_loss"], rel=1e-5)  # float sums in another order
    assert 0 < at_4["test_accuracy"] < 100  # a model that classifies some, not all: the counts are informative
