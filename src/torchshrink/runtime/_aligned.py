"""float32 scratch arrays aligned to 64 bytes inside numba kernels.

numba's ``np.empty`` / ``np.zeros`` align their data to 32 bytes, so half the time a
kernel's scratch starts 32 bytes into a cache line, and every 64-byte (zmm) load or
store of a row then spans two lines. The batched lookup-table kernels read rows of 64
floats of their tables and partial sums per output and were bimodal for it: the ternary
4096 x 4096 product at batch 64 took 4.0 ms or 5.8-6.4 ms depending on where the
allocator put the scratch (measured on a Zen 5 core, numba 0.61). These helpers
over-allocate by 64 bytes and return the view that starts on a line.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def empty64(shape):  # noqa: ANN001, ANN201 - numba function
    """``np.empty(shape, np.float32)`` whose data starts on a 64-byte boundary (``shape`` a tuple)."""
    n = 1
    for s in shape:
        n *= s
    buf = np.empty(n + 16, np.float32)
    off = int(((np.uint64(64) - (buf.ctypes.data & np.uint64(63))) & np.uint64(63)) >> np.uint64(2))
    return buf[off:off + n].reshape(shape)


@njit(cache=True, inline="always")
def zeros64(shape):  # noqa: ANN001, ANN201 - numba function
    """``np.zeros(shape, np.float32)`` whose data starts on a 64-byte boundary (``shape`` a tuple)."""
    a = empty64(shape)
    a[...] = 0.0
    return a
