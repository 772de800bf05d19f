"""The value every loader returns: normalized train/test tensors plus what a model needs.

Loaders hand raw integer pixels (N, C, H, W) to :func:`make_bundle`, which keeps the first
``limit`` samples, scales to [0, 1] and normalizes each channel by a fixed mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class DataBundle:
    """A loaded data set.

    ``train`` and ``test`` hold ``(x, y)``: x float32 (N, C, H, W) normalized per channel,
    y int64 class indices in ``[0, num_classes)``.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, int, int]
    num_classes: int
    classes: tuple[str, ...]


def make_bundle(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    scale: float,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    limit: int | None,
) -> DataBundle:
    """Build a :class:`DataBundle`; x = (pixels / scale - mean[c]) / std[c]."""
    datasets = [_dataset(x[:limit], y[:limit], scale, mean, std) for x, y in (train, test)]
    c, h, w = train[0].shape[1:]
    return DataBundle(
        name=name,
        train=datasets[0],
        test=datasets[1],
        input_shape=(int(c), int(h), int(w)),
        num_classes=len(classes),
        classes=tuple(classes),
    )


def _dataset(
    x: np.ndarray, y: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]
) -> TensorDataset:
    xt = torch.from_numpy(np.array(x, dtype=np.float32))  # a fresh, writable copy
    shape = (1, len(mean), 1, 1)
    xt.div_(scale).sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))
    return TensorDataset(xt, torch.from_numpy(np.array(y, dtype=np.int64)))
