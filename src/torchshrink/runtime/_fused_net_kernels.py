"""numba kernel running a whole small sparse CNN (conv, max-pool, ReLU, Linear) in one call.

The network is a *program*: one row of ``ops`` per layer (its kind and sizes, see
:mod:`.fused_net`), its nonzero weights in three flat arrays shared by every layer
(``ptr``: per output channel / input column ranges, ``idx``: input offsets / output
rows, ``val``: weights) and its biases in ``bias``. Each sample walks the program with
its activations in two ping-pong rows of ``bufs`` and a zero-padded plane for the
convolutions; samples are independent, so batches split over threads.

* ``CONV``: the direct sparse convolution of Park et al. 2017 (ICLR, §2), as in
  :mod:`._conv_kernels`: ``y[o, i, j] = b_o + Σ_p v_p · xpad[off_p + i·sh·Wp + j·sw]``.
* ``LINEAR``: EIE's column walk (Han et al. 2016, §III): for each nonzero input
  activation ``x_j``, ``y[row_p] += v_p · x_j`` over column ``j``'s entries (zero
  activations, a ReLU's output mostly, cost nothing).
* ``POOL``: max over ``kh x kw`` windows (no padding, floor mode); ``RELU`` in place.
"""

from __future__ import annotations

from numba import njit, prange

CONV, LINEAR, POOL, RELU = 0, 1, 2, 3


@njit(cache=True, fastmath=True)
def _sample(x, ops, ptr, idx, val, bias, out, bufs, b):
    buf = bufs[b]
    cur, nxt = 0, 1
    n0 = x.shape[1]
    for k in range(n0):
        buf[cur, k] = x[b, k]
    size = n0
    for r in range(ops.shape[0]):
        kind = ops[r, 0]
        if kind == RELU:
            for k in range(size):
                buf[cur, k] = max(buf[cur, k], 0.0)
            continue
        src, dst, pad = buf[cur], buf[nxt], buf[2]
        if kind == CONV:
            c_in, h, w, ph, pw, sh = ops[r, 1], ops[r, 2], ops[r, 3], ops[r, 4], ops[r, 5], ops[r, 6]
            sw, oh, ow, n_out, p0, b0 = ops[r, 7], ops[r, 8], ops[r, 9], ops[r, 10], ops[r, 11], ops[r, 12]
            hp, wp = h + 2 * ph, w + 2 * pw
            if ph or pw:
                for k in range(c_in * hp * wp):
                    pad[k] = 0.0
                for c in range(c_in):
                    for i in range(h):
                        d0, s0 = c * hp * wp + (i + ph) * wp + pw, (c * h + i) * w
                        for j in range(w):
                            pad[d0 + j] = src[s0 + j]
                xs = pad
            else:
                xs = src
            for o in range(n_out):
                y0 = o * oh * ow
                bo = bias[b0 + o]
                for k in range(oh * ow):
                    dst[y0 + k] = bo
                for p in range(ptr[p0 + o], ptr[p0 + o + 1]):
                    v, q = val[p], idx[p]
                    for i in range(oh):
                        row, yr = q + i * sh * wp, y0 + i * ow
                        for j in range(ow):
                            dst[yr + j] += v * xs[row + j * sw]
            size = n_out * oh * ow
        elif kind == LINEAR:
            n_in, n_out, p0, b0 = ops[r, 1], ops[r, 2], ops[r, 3], ops[r, 4]
            for o in range(n_out):
                dst[o] = bias[b0 + o]
            for j in range(n_in):
                a = src[j]
                if a == 0.0:
                    continue
                for p in range(ptr[p0 + j], ptr[p0 + j + 1]):
                    dst[idx[p]] += val[p] * a
            size = n_out
        else:  # POOL
            c_in, h, w, kh, kw = ops[r, 1], ops[r, 2], ops[r, 3], ops[r, 4], ops[r, 5]
            sh, sw, oh, ow = ops[r, 6], ops[r, 7], ops[r, 8], ops[r, 9]
            for c in range(c_in):
                for i in range(oh):
                    for j in range(ow):
                        s0 = c * h * w + i * sh * w + j * sw
                        m = src[s0]
                        for u in range(kh):
                            for t in range(kw):
                                m = max(m, src[s0 + u * w + t])
                        dst[(c * oh + i) * ow + j] = m
            size = c_in * oh * ow
        cur, nxt = nxt, cur
    for k in range(out.shape[1]):
        out[b, k] = buf[cur, k]


@njit(cache=True, fastmath=True, parallel=True)
def fused_net(x, ops, ptr, idx, val, bias, out, bufs, threads):
    """Every sample of ``x`` (batch, flat input) through the program; logits into ``out`` (batch, classes)."""
    for b in prange(x.shape[0]):
        _sample(x, ops, ptr, idx, val, bias, out, bufs, b)

