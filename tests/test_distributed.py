"""Two processes under torchrun (gloo on CPU) keep identical masks and weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def test_two_rank_torchrun_keeps_masks_identical(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    with safe_open(str(tmp_path / "rank0.safetensors"), "pt") as f:
        assert f.metadata()["world_size"] == "2"
    assert r0.keys() == r1.keys()
    mask_keys = [k for k in r0 if k.startswith("mask.")]
    assert len(mask_keys) == 2
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    for k in mask_keys:
        n = r0[k].numel()
        assert int((r0[k] == 0).sum()) == round(0.8 * n)
