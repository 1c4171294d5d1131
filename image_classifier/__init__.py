"""Train the PyTorch tutorial CNN on CIFAR-10, reproducibly."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("image-classifier")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
