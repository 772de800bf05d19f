"""Shared fixtures: small deterministic data and models."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n N` each worker gets one core's worth of threads: two workers with
    # two spinning torch/numba pools each on a 2-core machine made the suite 3x slower.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses the CLI tests start


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


def resign(path, edit) -> None:
    """Rewrite a .tsk file after ``edit(doc, blobs)``, with a valid header checksum."""
    from torchshrink.format.container import read_container, write_container

    doc, blobs, _, _ = read_container(path)
    blobs = {k: bytes(v) for k, v in blobs.items()}
    doc.pop("header_crc32")
    edit(doc, blobs)
    write_container(path, doc, blobs)
