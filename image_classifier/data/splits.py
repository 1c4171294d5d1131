"""The test split of an image folder that has no test folder (a seeded, stratified draw), and the leakage
check: a test image whose bytes are also a training image's."""

from __future__ import annotations

import numpy as np

from image_classifier.errors import DatasetError


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int, classes) -> np.ndarray:
    """A boolean test mask: `test_fraction` of each class (rounded, at least 1, never all), drawn from `seed`."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"--test_fraction {test_fraction}: must be between 0 and 1 (exclusive)")
    rng = np.random.default_rng(seed)  # PCG64: the same draws on every platform and numpy version
    test = np.zeros(len(labels), dtype=bool)
    too_small = []
    for label in range(len(classes)):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            too_small.append(f"{classes[label]} ({len(members)})")
            continue
        count = min(max(round(len(members) * test_fraction), 1), len(members) - 1)
        test[rng.permutation(members)[:count]] = True
    if too_small:
        raise DatasetError(
            "splitting by --test_fraction needs at least 2 images in every class; these have fewer: "
            + ", ".join(too_small)
        )
    return test


def leaked_pairs(paths: list[str], hashes: list[str], is_test: np.ndarray) -> list[tuple[str, str]]:
    """(training file, test file) pairs with the same bytes: a test image the model also trained on."""
    train_by_hash: dict[str, str] = {}
    for path, digest, test in zip(paths, hashes, is_test):
        if not test:
            train_by_hash.setdefault(digest, path)
    return [(train_by_hash[d], p) for p, d, t in zip(paths, hashes, is_test) if t and d in train_by_hash]
