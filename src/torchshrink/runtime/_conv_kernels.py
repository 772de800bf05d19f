"""numba kernel of the direct sparse convolution (no im2col) used by ``CompressedConv2d``.

Each output channel ``o`` keeps its nonzero weights as (offset, value) pairs, where the
offset ``c·Hp·Wp + ky·dh·Wp + kx·dw`` points at the weight's input tap in the zero-padded
input plane (``Hp x Wp``). Output pixel ``(i, j)`` of channel ``o`` is then
``Σ_p v_p · xp[off_p + i·sh·Wp + j·sw]``: the work is nonzeros x output pixels, and for
stride 1 the innermost loop over ``j`` reads contiguous inputs and vectorizes. This is
the direct sparse convolution of Park et al. 2017 ("Faster CNNs with Direct Sparse
Convolutions and Guided Pruning", ICLR 2017, §2), which skips im2col's copy of the input.

At stride 1 each output channel is computed *wide* (``oh x Wp``: output ``k = i·Wp + j``
reads ``xpad[off_p + k]``), 16 consecutive outputs in one register per nonzero
(:func:`._fused_net_kernels.wide_channel`, as the fused LeNet program does); on planes as
small as LeNet-5's the per-row loop above is too short to vectorize well.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._aligned import empty64
from ._fused_net_kernels import LANES, wide_channel


@njit(cache=True, fastmath=True, parallel=True)
def sparse_conv2d(x, ptr, off, val, bias, ph, pw, sh, sw, oh, ow, y, threads):
    """``y[n, o] = bias[o] + Σ_p val[p] · xpad[n][off[p] + i·sh·Wp + j·sw]`` for every (n, o) in parallel.

    ``x``: (N, C, H, W) float32; ``y``: (N, O, oh, ow) float32; ``bias``: (O,) (zeros if none).
    """
    n_img, c_in, h, w = x.shape
    n_out = y.shape[1]
    hp, wp = h + 2 * ph, w + 2 * pw
    xp = np.zeros((n_img, c_in * hp * wp + LANES), np.float32)  # + LANES: the wide runs read past the last plane
    for n in prange(n_img):
        for c in range(c_in):
            for i in range(h):
                base = c * hp * wp + (i + ph) * wp + pw
                for j in range(w):
                    xp[n, base + j] = x[n, c, i, j]
    if sh == 1 and sw == 1:  # wide rows, 16 outputs per register (see the module doc)
        wide = empty64((n_img * n_out, (oh - 1) * wp + ow + LANES))
        yf = y.reshape((n_img, n_out, oh * ow))
        for t in prange(n_img * n_out):
            n = t // n_out
            o = t - n * n_out
            wide_channel(xp[n], off, val, ptr[o], ptr[o + 1], bias[o], wide[t], oh, ow, wp, yf[n, o], 0)
        return
    for t in prange(n_img * n_out):
        n = t // n_out
        o = t - n * n_out
        xs = xp[n]
        yo = y[n, o]
        b = bias[o]
        for i in range(oh):
            for j in range(ow):
                yo[i, j] = b
        for p in range(ptr[o], ptr[o + 1]):
            v = val[p]
            q = off[p]
            for i in range(oh):
                row = q + i * sh * wp
                for j in range(ow):
                    yo[i, j] += v * xs[row + j * sw]
