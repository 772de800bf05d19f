"""Runtime: CPU kernels that run compressed layers without decoding them to dense.

* :mod:`~torchshrink.runtime.shared` -- pruned, weight-shared layers (EIE, Han et al.
  2016): :class:`SharedWeightsKernel` and :func:`shared_matmul`, with a batch-1
  path that skips zero input activations and a batched path for throughput.
* :mod:`~torchshrink.runtime.sparse` -- pruned fp32 layers (Han et al. 2015) in CSR:
  :class:`SparseKernel` and :func:`sparse_matmul`.
* :mod:`~torchshrink.runtime.dispatch` -- measured per-layer dispatch: every runtime layer
  keeps its decoded dense twin and runs whichever path is faster here (cached per
  machine and input shape); :func:`calibrate`, :func:`paths`, :func:`force`.
* :mod:`~torchshrink.runtime.pq` -- product-quantized layers run by lookup tables
  (Q-CNN, Wu et al. 2016): :class:`PQKernel` and :func:`pq_matmul`.
* :mod:`~torchshrink.runtime.xnor` -- bitwise layers (Kim & Smaragdis 2016) by XNOR and
  popcount: :class:`XnorWeight`, :func:`xnor_matmul`, the binary convolution
  :func:`xnor_conv2d` and :class:`BitwiseMLP` (activations packed between layers).
* :mod:`~torchshrink.runtime.tt` -- Tensor-Train layers (Novikov et al. 2015):
  :class:`TTKernel`, core contraction on cores merged at load (no transposed copies).
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
from .xnor import (BitwiseMLP, XnorConvWeight, XnorWeight, reference_xnor_conv2d, reference_xnor_matmul, xnor_conv2d,
                   xnor_matmul)
from .sparse import SparseKernel, reference_sparse_matmul, sparse_matmul
from .dispatch import calibrate, drop_twins, force, paths
from .tt import TTKernel, reference_tt_matmul
from .ternary import TernaryConv2d, TernaryKernel, TernaryLinear, reference_ternary_matmul, ternary_matmul

__all__ = [
    "BitwiseMLP",
    "XnorConvWeight",
    "XnorWeight",
    "reference_xnor_conv2d",
    "reference_xnor_matmul",
    "xnor_conv2d",
    "xnor_matmul",
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
    "SparseKernel",
    "sparse_matmul",
    "reference_sparse_matmul",
    "calibrate",
    "drop_twins",
    "force",
    "paths",
]
__all__ += ["TTKernel", "reference_tt_matmul"]
