"""Training throughput: the notebook's data pipeline against the package's in-memory batches.

    python benchmarks/data_pipeline.py [--train-size 5000] [--batch-size 4] [--repeats 3]

Both variants train the same model for one epoch on the same generated CIFAR-format dataset, in the same
process, alternating, and print images per second (best of the repeats: timing noise here is 20-35 %).
The notebook's pipeline is torchvision's CIFAR10 with ToTensor + Normalize and a DataLoader with 2
workers; the package keeps uint8 tensors in memory and normalises whole batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import torchvision
from torchvision import transforms

from image_classifier.data.batches import iterate_batches, num_batches
from image_classifier.data.cifar import load_dataset
from image_classifier.data.synthetic import generate_dataset
from image_classifier.model.model import Net
from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch


def notebook_batches(folder: Path, batch_size: int):
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):  # generated, not official
        dataset = torchvision.datasets.CIFAR10(str(folder), train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2)


def images_per_second(batches, size: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = Net()
    optimizer = build_optimizer(model, 0.001, 0.9)
    started = time.perf_counter()
    train_one_epoch(model, batches, optimizer, EpochProgress(epoch=1), num_batches(size, batch_size))
    return size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate_dataset(folder, args.train_size, 100, seed=0)
        data = load_dataset(folder)
        results: dict[str, list[float]] = {"notebook DataLoader": [], "in-memory batches": []}
        for _ in range(args.repeats):
            results["notebook DataLoader"].append(
                images_per_second(notebook_batches(folder, args.batch_size), args.train_size, args.batch_size)
            )
            order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
            batches = iterate_batches(data.train, args.batch_size, torch.device("cpu"), order)
            results["in-memory batches"].append(images_per_second(batches, args.train_size, args.batch_size))
    baseline = max(results["notebook DataLoader"])
    threads = torch.get_num_threads()
    print(f"training throughput, {args.train_size} images, batch size {args.batch_size}, {threads} threads")
    for name, values in results.items():
        best = max(values)
        print(f"  {name:20s} {best:8.0f} images/s (best of {len(values)})  x{best / baseline:.2f}")


if __name__ == "__main__":
    main()
