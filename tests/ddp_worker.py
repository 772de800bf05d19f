"""Run under torchrun by test_distributed.py: AGP + iterative pruning under DDP (gloo).

Each rank writes its masks and weights to OUT/rank{r}.safetensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from torchshrink.prune.masks import masks
from torchshrink.prune.agp import AGP
from torchshrink.train import TrainConfig, fit
from torchshrink.core.transform import effective_state_dict


def main(out: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 32, generator=g)
    data = TensorDataset(x, (x @ torch.randn(32, 10, generator=g)).argmax(1))
    # Different initial weights per rank: DDP must broadcast rank 0's so masks agree.
    rank = int(__import__("os").environ["RANK"])
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(model, data, TrainConfig(epochs=3, batch_size=25, lr=0.05), callbacks=[AGP(0.8, end_epoch=2, frequency=2)],
        progress=False, seed=1)
    tensors = {f"mask.{k}": m.mask.contiguous() for k, m in masks(model).items()}
    tensors.update({f"weight.{k}": v.contiguous() for k, v in effective_state_dict(model).items()})
    save_file(tensors, str(out / f"rank{dist.get_rank()}.safetensors"),
              metadata={"world_size": str(dist.get_world_size())})
    dist.barrier()  # both ranks done with their collectives before either tears gloo down (one abort seen at load)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
