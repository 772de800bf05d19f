"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), no network.

The CSV that ships inside scikit-learn is read directly: importing ``sklearn.datasets``
costs most of a second, reading the file a few milliseconds. The values are the same as
``sklearn.datasets.load_digits()`` (pixels 0..16).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .bundle import DataBundle, make_bundle

CLASSES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.25


def load_digits_bundle(split_seed: int, limit: int | None) -> DataBundle:
    """Stratified 75/25 split drawn from ``split_seed`` alone; train mean/std normalization."""
    images, labels = _read_digits()
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, split_seed)
    pixels = images[train_idx].astype(np.float64) / 16.0
    mean, std = float(pixels.mean()), float(pixels.std())
    return make_bundle(
        "digits",
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        scale=16.0,
        mean=[mean],
        std=[std],
        classes=CLASSES,
        limit=limit,
    )


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class gives round(test_fraction * n_c) samples to test.

    One permutation from ``numpy.random.default_rng(seed)`` orders everything, so both
    index arrays come out shuffled and the split never depends on torch's global seed.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        is_test[members[: round(test_fraction * len(members))]] = True
    return order[~is_test[order]], order[is_test[order]]


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 1, 8, 8), labels int64) from scikit-learn's bundled CSV."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    roots = spec.submodule_search_locations if spec is not None else None
    csv = Path(next(iter(roots))) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
        images, labels = table[:, :-1], table[:, -1]
    else:  # a future layout: fall back to the public (slower) loader
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
    return images.astype(np.uint8).reshape(-1, 1, 8, 8), labels.astype(np.int64)
