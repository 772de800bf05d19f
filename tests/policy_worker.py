"""Run under torchrun by test_policy.py: the policy profile of a fixed tiny model, split across ranks.

Rank 0 writes the table to OUT/table.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from torchshrink.policy import grid, profile
from torchshrink.policy.profile import table_dicts


def tiny() -> tuple[nn.Module, TensorDataset]:
    """The model and held-out data both the worker and the test build (deterministic)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 4, 4, generator=g)
    y = (x.flatten(1) @ torch.randn(16, 5, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5))
    return model, TensorDataset(x, y)


def table() -> list[dict]:
    torch.set_num_threads(1)
    model, held = tiny()
    return table_dicts(profile(model, held, ["1", "3"], grid([0.0, 0.5, 0.8], [2, 4]), (1, 4, 4),
                               include_bias=True, progress=False))


def main(out: Path) -> None:
    rows = table()
    if dist.get_rank() == 0:
        (out / "table.json").write_text(json.dumps({"world": dist.get_world_size(), "rows": rows}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
