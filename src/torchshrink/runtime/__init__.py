"""Runtime: CPU kernels that run compressed layers without decoding them to dense.

* :mod:`~torchshrink.runtime.shared` -- pruned, weight-shared layers (EIE, Han et al.
  2016): :class:`SharedWeightsKernel` and :func:`shared_matmul`, with a batch-1
  path that skips zero input activations and a batched path for throughput.
* :mod:`~torchshrink.runtime.pq` -- product-quantized layers run by lookup tables
  (Q-CNN, Wu et al. 2016): :class:`PQKernel` and :func:`pq_matmul`.
* :mod:`~torchshrink.runtime.tt` -- Tensor-Train layers (Novikov et al. 2015):
  :class:`TTKernel`, core contraction or the rebuilt weight, whichever measures faster.

Kernel weights are built from packed values only (``from_packed``; the techniques make
those), and the runtime modules (:mod:`~torchshrink.runtime.modules`) run any kernel
weight. Each kernel has a plain-PyTorch reference twin (``reference_*``: decode, then
``F.linear``) that the tests compare against. Kernels are numba ``@njit(parallel=True)``
functions compiled on first use and cached on disk; they use at most as many threads as
the process has CPUs (see :mod:`torchshrink.runtime._common` on sharing cores with
torch). ``benchmarks/kernels.py`` measures them against dense and CSR PyTorch.
"""

from __future__ import annotations

from .pq import PQKernel, pq_matmul, reference_pq_matmul
from .shared import SharedWeightsKernel, reference_shared_matmul, shared_matmul
from .tt import TTKernel, reference_tt_matmul

__all__ = [
    "PQKernel",
    "SharedWeightsKernel",
    "pq_matmul",
    "reference_pq_matmul",
    "reference_shared_matmul",
    "shared_matmul",
]
__all__ += ["TTKernel", "reference_tt_matmul"]
