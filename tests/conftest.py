"""Shared fixtures: small deterministic data and models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset


@pytest.fixture
def toy_data() -> TensorDataset:
    """A linearly separable 10-class problem on 32 features (600 samples)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 32, generator=g)
    w = torch.randn(32, 10, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def make_mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))


@pytest.fixture
def mlp() -> nn.Module:
    return make_mlp()
