"""numba kernel running a whole small sparse CNN (conv, max-pool, ReLU, Linear) in one call.

The network is a *program*: one row of ``ops`` per layer (its kind and sizes, see
:mod:`.fused_net`), its nonzero weights in three flat arrays shared by every layer
(``ptr``: per output channel / input column ranges, ``idx``: input offsets / output
rows, ``val``: weights) and its biases in ``bias``. Each sample walks the program with
its activations in two ping-pong rows of ``bufs``, a zero-padded plane for the
convolutions and the ``im2col`` rows of a ``CONV_COLS``; samples are independent, so batches split over threads.

* ``CONV``: the direct sparse convolution of Park et al. 2017 (ICLR, §2), as in
  :mod:`._conv_kernels`: ``y[o, i, j] = b_o + Σ_p v_p · xpad[off_p + i·sh·Wp + j·sw]``.
* ``CONV_COLS``, the same sum with :data:`LANES` outputs of a channel at a time in one
  register (:func:`_sum_rows`: one vector load and multiply-add per nonzero), for small
  planes such as LeNet-5's 8x8 and 4x4, where the per-position loops of ``CONV`` are too
  short to vectorize and its sums go through memory once per weight. At stride 1 the
  plane is computed *wide*, ``oh x Wp`` (``Wp`` the padded row length), so that output
  ``k = i·Wp + j`` reads ``xpad[off_p + k]``: 16 consecutive outputs are 16 consecutive
  inputs, and the ``Wp - ow`` extra columns per row are dropped when the valid ones are
  copied out. Other strides unroll the input into ``im2col`` rows first (one per input
  channel and kernel offset, ``oh·ow`` positions padded to a multiple of 16).
* ``LINEAR``: EIE's column walk (Han et al. 2016, §III): for each nonzero input
  activation ``x_j``, ``y[row_p] += v_p · x_j`` over column ``j``'s entries (zero
  activations, a ReLU's output mostly, cost nothing).
* ``POOL``: max over ``kh x kw`` windows (no padding, floor mode); ``RELU`` in place.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from ._xnor_kernels import _zmm

CONV, LINEAR, POOL, RELU, CONV_COLS = 0, 1, 2, 3, 4
#: Output positions a ``CONV_COLS`` pass keeps in registers.
LANES = 16

_F32V = ir.VectorType(ir.FloatType(), LANES)
_I64 = ir.IntType(64)


@intrinsic
def _sum_rows(typingctx, cols_addr, stride, idx_addr, val_addr, p0, p1, out_addr):  # noqa: ANN001 - intrinsic
    """``out[0:16] += Σ_{p0 <= p < p1} val[p] · cols[idx[p]·stride : +16]`` with the 16 sums in one register.

    ``cols`` float32, ``idx`` int32, ``val`` float32 (addresses); loads and stores are
    unaligned ``<16 x float>``. Written in LLVM IR because numba's loop vectorizer turns
    the same loop in Python into 16 gathers per 4 nonzeros (it vectorizes over ``p``).
    """
    sig = types.void(types.uint64, types.int64, types.uint64, types.uint64, types.int64, types.int64, types.uint64)

    def codegen(context, builder, signature, args):  # noqa: ANN001
        ca, st, ia, va, begin, end, oa = args
        _zmm(builder.function)
        fp = ir.FloatType().as_pointer()
        cols = builder.inttoptr(ca, fp)
        idx = builder.inttoptr(ia, ir.IntType(32).as_pointer())
        val = builder.inttoptr(va, fp)
        out = builder.inttoptr(oa, _F32V.as_pointer())
        init = builder.load(out, align=4)
        pre = builder.block
        loop = builder.append_basic_block("sum_rows.loop")
        done = builder.append_basic_block("sum_rows.done")
        builder.cbranch(builder.icmp_signed("<", begin, end), loop, done)
        builder.position_at_end(loop)
        p = builder.phi(_I64)
        acc = builder.phi(_F32V)
        q = builder.mul(builder.sext(builder.load(builder.gep(idx, [p]), align=4), _I64), st)
        row = builder.load(builder.bitcast(builder.gep(cols, [q]), _F32V.as_pointer()), align=4)
        v = builder.insert_element(ir.Constant(_F32V, ir.Undefined), builder.load(builder.gep(val, [p]), align=4),
                                   ir.Constant(ir.IntType(32), 0))
        v = builder.shuffle_vector(v, ir.Constant(_F32V, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
        new = builder.fadd(acc, builder.fmul(v, row, flags=("fast",)), flags=("fast",))
        p1 = builder.add(p, ir.Constant(_I64, 1))
        p.add_incoming(begin, pre)
        p.add_incoming(p1, loop)
        acc.add_incoming(init, pre)
        acc.add_incoming(new, loop)
        builder.cbranch(builder.icmp_signed("<", p1, end), loop, done)
        builder.position_at_end(done)
        final = builder.phi(_F32V)
        final.add_incoming(init, pre)
        final.add_incoming(new, loop)
        builder.store(final, out, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, fastmath=True, inline="always")
def wide_channel(xs, idx, val, begin, end, bias_o, wide, oh, ow, wp, dst, d0):
    """One output channel at stride 1: ``dst[d0 + i·ow + j] = bias_o + Σ_p val[p] · xs[idx[p] + i·Wp + j]``.

    ``p`` runs over ``begin .. end``; the sums are taken *wide* (see the module doc),
    :data:`LANES` consecutive outputs ``k = i·Wp + j`` per :func:`_sum_rows` call, in the
    scratch ``wide`` (at least ``(oh - 1)·Wp + ow + LANES`` floats); ``xs`` must hold
    :data:`LANES` readable floats past its last plane. Shared by ``CONV_COLS`` and
    :func:`._conv_kernels.sparse_conv2d`.
    """
    span = (oh - 1) * wp + ow
    for c0 in range(0, span, LANES):
        for k in range(LANES):
            wide[c0 + k] = bias_o
        _sum_rows(xs.ctypes.data + np.uint64(4 * c0), 1, idx.ctypes.data, val.ctypes.data, begin, end,
                  wide.ctypes.data + np.uint64(4 * c0))
    for i in range(oh):
        for j in range(ow):
            dst[d0 + i * ow + j] = wide[i * wp + j]


@njit(cache=True, fastmath=True, inline="always")
def _padded(src, pad, c_in, h, w, ph, pw):
    """``src`` (c_in x h x w) zero-padded by ``ph, pw`` into ``pad``, or ``src`` itself when there is no padding."""
    if not (ph or pw):
        return src
    hp, wp = h + 2 * ph, w + 2 * pw
    for k in range(c_in * hp * wp):
        pad[k] = 0.0
    for c in range(c_in):
        for i in range(h):
            d0, s0 = c * hp * wp + (i + ph) * wp + pw, (c * h + i) * w
            for j in range(w):
                pad[d0 + j] = src[s0 + j]
    return pad


@njit(cache=True, fastmath=True, inline="always")
def _conv_cols(src, dst, pad, cols, row, idx, val, bias, ptr):
    """One ``CONV_COLS`` op on one sample (see the module doc); ``row`` is its program row."""
    c_in, h, w, ph, pw, sh, sw, oh, ow = row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]
    n_out, p0, b0, kh, kw, dh, dw = row[10], row[11], row[12], row[13], row[14], row[15], row[16]
    hp, wp = h + 2 * ph, w + 2 * pw
    n_pos = oh * ow
    stride = (n_pos + LANES - 1) // LANES * LANES
    xs = _padded(src, pad, c_in, h, w, ph, pw)
    if sh == 1 and sw == 1:  # wide rows: output k = i·Wp + j reads xpad[idx_p + k], no im2col
        for o in range(n_out):
            wide_channel(xs, idx, val, ptr[p0 + o], ptr[p0 + o + 1], bias[b0 + o], cols, oh, ow, wp, dst, o * n_pos)
        return n_out * n_pos
    for c in range(c_in):  # im2col: one row of ``stride`` positions per (input channel, ky, kx)
        for ky in range(kh):
            for kx in range(kw):
                r0 = ((c * kh + ky) * kw + kx) * stride
                for i in range(oh):
                    s0, d0 = c * hp * wp + (i * sh + ky * dh) * wp + kx * dw, r0 + i * ow
                    for j in range(ow):
                        cols[d0 + j] = xs[s0 + j * sw]
                for k in range(n_pos, stride):
                    cols[r0 + k] = 0.0
    for o in range(n_out):
        bo = bias[b0 + o]
        for c0 in range(0, n_pos, LANES):
            y0 = o * n_pos + c0  # the 16 sums start from the bias and end here (a tail spills into the next channel's)
            for k in range(LANES):
                dst[y0 + k] = bo
            _sum_rows(cols.ctypes.data + np.uint64(4 * c0), stride, idx.ctypes.data, val.ctypes.data,
                      ptr[p0 + o], ptr[p0 + o + 1], dst.ctypes.data + np.uint64(4 * y0))
    return n_out * n_pos


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
        if kind == CONV_COLS:
            size = _conv_cols(src, dst, pad, buf[3], ops[r], idx, val, bias, ptr)
        elif kind == CONV:
            c_in, h, w, ph, pw, sh = ops[r, 1], ops[r, 2], ops[r, 3], ops[r, 4], ops[r, 5], ops[r, 6]
            sw, oh, ow, n_out, p0, b0 = ops[r, 7], ops[r, 8], ops[r, 9], ops[r, 10], ops[r, 11], ops[r, 12]
            hp, wp = h + 2 * ph, w + 2 * pw
            xs = _padded(src, pad, c_in, h, w, ph, pw)
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

