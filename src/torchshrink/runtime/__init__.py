"""Runtime: CPU kernels that run compressed layers without decoding them to dense.

* :mod:`~torchshrink.runtime.shared` -- pruned, weight-shared layers (EIE, Han et al.
  2016): :class:`SharedWeightsKernel` and :func:`shared_matmul`, with a batch-1
  path that skips zero input activations and a batched path for throughput.
* :mod:`~torchshrink.runtime.pq` -- product-quantized layers run by lookup tables
  (Q-CNN, Wu et al. 2016): :class:`PQKernel` and :func:`pq_matmul`.
* :mod:`~torchshrink.runtime.ternary` / :mod:`~torchshrink.runtime.binary` -- ternary
  (TTQ) and binary-weight (BinaryConnect, BWN, LAB) layers run by sums of activations
  looked up in tables (no multiplication per weight): :class:`TernaryKernel`,
  :class:`BinaryKernel`, :func:`ternary_matmul`, :func:`binary_matmul`.

Kernel weights are built from packed values only (``from_packed``; the techniques make
those), and the runtime modules (:mod:`~torchshrink.runtime.modules`) run any kernel
weight. Each kernel has a plain-PyTorch reference twin (``reference_*``: decode, then
``F.linear``) that the tests compare against. Kernels are numba ``@njit(parallel=True)``
functions compiled on first use and cached on disk; they use at most as many threads as
the process has CPUs (see :mod:`torchshrink.runtime._common` on sharing cores with
torch). ``benchmarks/kernels.py`` measures them against dense and CSR PyTorch.
"""

from __future__ import annotations

from .binary import BinaryKernel, BinaryWeightConv2d, BinaryWeightLinear, binary_matmul, reference_binary_matmul
from .pq import PQKernel, pq_matmul, reference_pq_matmul
from .shared import SharedWeightsKernel, reference_shared_matmul, shared_matmul
from .ternary import TernaryConv2d, TernaryKernel, TernaryLinear, reference_ternary_matmul, ternary_matmul

__all__ = [
    "BinaryKernel",
    "BinaryWeightConv2d",
    "BinaryWeightLinear",
    "TernaryConv2d",
    "TernaryKernel",
    "TernaryLinear",
    "binary_matmul",
    "reference_binary_matmul",
    "reference_ternary_matmul",
    "ternary_matmul",
    "PQKernel",
    "SharedWeightsKernel",
    "pq_matmul",
    "reference_pq_matmul",
    "reference_shared_matmul",
    "shared_matmul",
]
