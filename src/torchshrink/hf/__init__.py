"""Real pretrained models without labels: Hugging Face / sentence-transformers folders.

``compress_hf(path, ratio)`` quantizes a local folder's transformer response-aware (GPTQ
onto per-row grids, mixed precision chosen by the exact knapsack of
:mod:`torchshrink.policy.search`) to a file-size ratio; ``save_compressed`` writes a folder
with ``model.tsk``; ``load_hf`` (and ``torchshrink.load``) gives back a model
sentence-transformers can use. See ``docs/hf.md``.
"""

from __future__ import annotations

from .compress import Calibrated, Compressed, calibrate_hf, compress_calibrated, compress_hf, dense_bytes
from .saved import load_any, load_hf, save_compressed

__all__ = ["Calibrated", "Compressed", "calibrate_hf", "compress_calibrated", "compress_hf", "dense_bytes", "load_any", "load_hf", "save_compressed"]
