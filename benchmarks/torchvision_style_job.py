"""The same job as `image_classifier_trainer` on an image folder, written the way torchvision's tutorials write it:
`ImageFolder` + `Resize` + `ToTensor` + `Normalize`, `DataLoader(shuffle=True, num_workers=2)`, an SGD loop
with `loss.item()` every step, and an evaluation of the test folder after every epoch (as the trainer does).

    python benchmarks/torchvision_style_job.py IMAGES --epochs 5 --batch_size 64 [--architecture resnet18]
    python benchmarks/torchvision_style_job.py IMAGES --decode_only      # one pass over every file, no model

IMAGES holds train/<class>/ and test/<class>/. It prints one JSON line: seconds spent decoding, training,
evaluating, images/s. bench_folders.py runs it as a whole process beside the package's trainer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import transforms


class Net(nn.Module):  # the PyTorch CIFAR-10 tutorial's
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--architecture", default="net")
    parser.add_argument("--decode_only", action="store_true")
    args = parser.parse_args()

    transform = transforms.Compose(
        [
            transforms.Resize((args.image_size, args.image_size)),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    trainset = torchvision.datasets.ImageFolder(str(args.images / "train"), transform=transform)
    testset = torchvision.datasets.ImageFolder(str(args.images / "test"), transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=args.batch_size, shuffle=True, num_workers=2)
    testloader = torch.utils.data.DataLoader(testset, batch_size=args.batch_size, shuffle=False, num_workers=2)

    if args.decode_only:
        started = time.perf_counter()
        count = sum(len(labels) for loader in (trainloader, testloader) for _, labels in loader)
        seconds = time.perf_counter() - started
        print(json.dumps({"images": count, "seconds": seconds, "images_per_second": count / seconds}))
        return

    if args.architecture == "net":
        net = Net(len(trainset.classes))
    else:
        net = torchvision.models.get_model(args.architecture, num_classes=len(trainset.classes))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    train_seconds = test_seconds = 0.0
    for epoch in range(args.epochs):
        started = time.perf_counter()
        net.train()
        running_loss = 0.0
        for i, (inputs, labels) in enumerate(trainloader):
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in testloader:
                predicted = net(images).argmax(1)
                total += labels.size(0)
                correct += (predicted == labels).sum().item()
        test_seconds += time.perf_counter() - started
        print(
            f"epoch {epoch + 1}: loss {running_loss / (i + 1):.3f}, accuracy {100 * correct / total:.1f} %", flush=True
        )
    print(
        json.dumps(
            {
                "train_seconds": train_seconds,
                "test_seconds": test_seconds,
                "train_images_per_second": args.epochs * len(trainset) / train_seconds,
                "accuracy": 100 * correct / total,
            }
        )
    )


if __name__ == "__main__":
    main()
