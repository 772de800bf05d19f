"""numba kernels for bitwise layers (Kim & Smaragdis 2016; XNOR-Net's binary convolution).

With ±1 values stored as bits (1 = +1, 0 = −1) a dot product of ``n`` entries is
``x·w = n − 2·popcount(x XOR w)`` (the paper's ``2·popcount(xnor(x, w)) − n``, counted
from the disagreements instead of the agreements). Rows are padded to whole 64-bit words
with zero bits on both sides, which agree and so add nothing to the count.

Layout (OpenVINO's binary convolution, ``../shared/DESIGN.md``): weights are cut into
blocks of :data:`LANES` output rows whose words are interleaved, ``wt[block, word, lane]``,
so one input word is broadcast against a vector of 16 output rows' words: XOR, VPOPCNTQ
and an add per 8 lanes, no horizontal sum.

The micro-kernel (:func:`_make_tile`) is written in LLVM IR, as a GEMM micro-kernel is
written in assembly: :data:`ROWS` input rows (batch rows, or output pixels of a
convolution) x 16 lanes = 16 ``<8 x i64>`` accumulators held in zmm registers for the
whole reduction, each weight vector loaded once per word and reused by the 8 rows, the
input word broadcast straight from memory. (numba's own loops put the accumulators in
memory and split the vectors into ymm halves: LLVM's Intel models prefer 256-bit
vectors unless a function asks for 512, see :func:`_zmm`.) A binary convolution calls it
once per 8 output pixels, one segment per kernel row: the ``kw·cw`` words of a window
row are contiguous in the padded NHWC input, and consecutive output pixels are
``stride·cw`` words apart.

Popcount paths (:data:`PATHS`): ``"ctpop"`` calls LLVM's ``llvm.ctpop``, which LLVM
lowers to VPOPCNTQ where the CPU has AVX-512 VPOPCNTDQ (checked in the assembly by the
tests), to a PSHUFB nibble lookup on AVX2 and to POPCNT otherwise; ``"lookup"`` is a
portable byte-table popcount, the fallback for CPUs without any of these, which the
tests compare with the fast path. Every kernel takes ``lookup`` (a bool) and holds both
paths, chosen once per weight block, so one compiled and cached function serves both;
the fallback's inner loops are plain numba loops (one input row at a time), as are those
of masked weights (the sparsity threshold).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

#: Output rows per interleaved weight block (two AVX-512 vectors of 64-bit words).
LANES = 16
#: Input rows (batch rows or output pixels) sharing one pass over a weight block (2·ROWS zmm accumulators).
ROWS = 8
PATHS = ("ctpop", "lookup")

_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint64)


@intrinsic
def _ctpop(typingctx, x):  # noqa: ANN001 - numba intrinsic signature
    """``llvm.ctpop.i64``: the CPU's popcount instruction (VPOPCNTQ once vectorized)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # noqa: ANN001
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")
def _lookup(v):
    """Popcount of a 64-bit word by 8 byte-table lookups (no popcount instruction needed)."""
    t = _BYTE_COUNTS
    return (t[v & 0xFF] + t[(v >> 8) & 0xFF] + t[(v >> 16) & 0xFF] + t[(v >> 24) & 0xFF]
            + t[(v >> 32) & 0xFF] + t[(v >> 40) & 0xFF] + t[(v >> 48) & 0xFF] + t[v >> 56])


def _zmm(fn: ir.Function) -> None:
    """Let LLVM keep 512-bit vectors whole in ``fn`` (``"min-legal-vector-width"="512"``).

    LLVM's Intel CPU models prefer 256-bit vectors and split wider ones into ymm halves
    unless the function asks for 512; llvmlite's attribute set knows no string
    attributes, hence ``set.add``. Without AVX-512 the attribute changes nothing.
    """
    set.add(fn.attributes, '"min-legal-vector-width"="512"')


def _make_tile(rows: int):  # noqa: ANN202 - returns a numba intrinsic
    """An intrinsic ``tile(x_addr, x_stride, w_addr, n, acc_addr, segs, seg_stride)``: the register-tiled micro-kernel.

    For ``segs`` segments ``s`` of ``n`` words ``k`` (``n, segs >= 1``; ``t = s·n + k``) and
    each of ``rows`` input rows ``r`` (word at ``x_addr + 8·(r·x_stride + s·seg_stride + k)``):
    broadcast the word, XOR it with the weight block's 16 words ``w[t, 0:16]`` (two
    ``<8 x i64>`` vectors, loaded once per ``t`` and reused by every row), ``llvm.ctpop``
    and add to ``acc[r, 0:16]``. The ``2·rows`` accumulators are SSA values (registers)
    for the whole loop; ``acc`` is read before and written after. On AVX-512 VPOPCNTDQ
    this is VPXORQ, VPOPCNTQ, VPADDQ on zmm. A GEMM has one segment; a convolution one
    per kernel row (the rows of a window are ``seg_stride`` words apart in the input).
    """

    @intrinsic
    def tile(typingctx, x_addr, x_stride, w_addr, n, acc_addr, segs, seg_stride):  # noqa: ANN001 - intrinsic
        sig = types.void(types.uint64, types.int64, types.uint64, types.int64, types.uint64, types.int64, types.int64)

        def codegen(context, builder, signature, args):  # noqa: ANN001
            xa, xs, wa, count, aa, nseg, sstride = args
            total = builder.mul(count, nseg)
            skip = builder.sub(sstride, builder.sub(count, _i64(1)))  # x offset step from a segment's end
            _zmm(builder.function)
            vec = ir.VectorType(_I64, _VEC)
            name = f"llvm.ctpop.v{_VEC}i64"
            ctpop = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vec, [vec]), name)
            xp = builder.inttoptr(xa, _I64.as_pointer())
            wp = builder.inttoptr(wa, vec.as_pointer())
            ap = builder.inttoptr(aa, vec.as_pointer())
            nv = LANES // _VEC
            cells = [(r, v) for r in range(rows) for v in range(nv)]
            init = {c: builder.load(builder.gep(ap, [_i64(c[0] * nv + c[1])]), align=8) for c in cells}
            pre = builder.block
            loop = builder.append_basic_block("xnor_tile.loop")
            done = builder.append_basic_block("xnor_tile.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            t = builder.phi(_I64)  # word of the weight block
            k = builder.phi(_I64)  # word within the segment
            xo = builder.phi(_I64)  # word offset in the input row: s·seg_stride + k
            acc = {c: builder.phi(vec) for c in cells}
            w = [builder.load(builder.gep(wp, [builder.add(builder.mul(t, _i64(nv)), _i64(v))]), align=8)
                 for v in range(nv)]
            new = {}
            for r in range(rows):
                word = builder.load(builder.gep(xp, [builder.add(builder.mul(xs, _i64(r)), xo)]), align=8)
                b = builder.insert_element(ir.Constant(vec, ir.Undefined), word, ir.Constant(ir.IntType(32), 0))
                b = builder.shuffle_vector(b, ir.Constant(vec, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), _VEC), [0] * _VEC))
                for v in range(nv):
                    new[r, v] = builder.add(acc[r, v], builder.call(ctpop, [builder.xor(b, w[v])]))
            t1 = builder.add(t, _i64(1))
            k1 = builder.add(k, _i64(1))
            wrap = builder.icmp_signed("==", k1, count)
            k_next = builder.select(wrap, _i64(0), k1)
            xo_next = builder.add(xo, builder.select(wrap, skip, _i64(1)))
            for phi, first, nxt in ((t, _i64(0), t1), (k, _i64(0), k_next), (xo, _i64(0), xo_next)):
                phi.add_incoming(first, pre)
                phi.add_incoming(nxt, loop)
            for c in cells:
                acc[c].add_incoming(init[c], pre)
                acc[c].add_incoming(new[c], loop)
            builder.cbranch(builder.icmp_signed("<", t1, total), loop, done)
            builder.position_at_end(done)
            for c in cells:
                builder.store(new[c], builder.gep(ap, [_i64(c[0] * nv + c[1])]), align=8)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_I64 = ir.IntType(64)
_VEC = 8  # 64-bit words per vector: one zmm


def _i64(v: int) -> ir.Constant:
    return ir.Constant(_I64, v)


#: The micro-kernels: ROWS input rows x 16 lanes, and one row (batch tails, batch 1).
_tile_rows = _make_tile(ROWS)
_tile_one = _make_tile(1)


@njit(fastmath=True, cache=True)
def _acc_rows(x, b0, nr, wt, nb, kw, acc, masked, mt, lookup):
    """One input row at a time, for masked weights or the lookup path."""
    for r in range(nr):
        for k in range(kw):
            xv = x[b0 + r, k]
            if lookup:
                for j in range(LANES):
                    d = xv ^ wt[nb, k, j]
                    acc[r, j] += _lookup(d & mt[nb, k, j] if masked else d)
            elif masked:
                for j in range(LANES):
                    acc[r, j] += _ctpop((xv ^ wt[nb, k, j]) & mt[nb, k, j])
            else:
                for j in range(LANES):
                    acc[r, j] += _ctpop(xv ^ wt[nb, k, j])


@njit(inline="always")
def _addr(a, words):
    """The address of the 64-bit word ``words`` of C-contiguous ``a``."""
    return a.ctypes.data + np.uint64(8 * words)


@njit(inline="always")
def _run_block(lookup, x, b0, nr, wt, nb, kw, acc, masked, mt):
    """``acc[r, lane]`` = disagreements of input row ``b0 + r`` with the rows of block ``nb``."""
    acc[:, :] = 0
    if masked or lookup:
        _acc_rows(x, b0, nr, wt, nb, kw, acc, masked, mt, lookup)
    elif nr == ROWS:
        _tile_rows(_addr(x, b0 * kw), kw, _addr(wt, nb * kw * LANES), kw, _addr(acc, 0), 1, 0)
    else:
        for r in range(nr):
            _tile_one(_addr(x, (b0 + r) * kw), 0, _addr(wt, nb * kw * LANES), kw, _addr(acc, r * LANES), 1, 0)


@njit(fastmath=True, parallel=True, cache=True)
def gemm(x, wt, n_active, masked, mt, n_out, out, lookup, threads):
    """``out[b, o] = x_b·w_o`` (int32) for packed inputs ``x`` (B, kw) and blocks ``wt``."""
    batch, kw = x.shape
    for nb in prange(wt.shape[0]):
        acc = np.zeros((ROWS, LANES), np.uint64)
        for b0 in range(0, batch, ROWS):
            nr = min(ROWS, batch - b0)
            _run_block(lookup, x, b0, nr, wt, nb, kw, acc, masked, mt)
            for j in range(LANES):
                o = nb * LANES + j
                if o < n_out:
                    for r in range(nr):
                        out[b0 + r, o] = np.int32(n_active[o]) - 2 * np.int32(acc[r, j])

@njit(fastmath=True, parallel=True, cache=True)
def gemm_sign(x, wt, n_active, masked, mt, threshold, flip, n_out, out, lookup, threads):
    """Packed ``sign`` outputs: bit ``o`` of row ``b`` = ``(x_b·w_o >= threshold[o]) XOR flip[o]``.

    ``out`` is (B, ceil(n_out / 64)) uint64; one task fills one output word (4 blocks).
    """
    batch, kw = x.shape
    n_blocks = wt.shape[0]
    per_word = 64 // LANES
    for ow in prange(out.shape[1]):
        acc = np.zeros((ROWS, LANES), np.uint64)
        words = np.zeros(ROWS, np.uint64)
        for b0 in range(0, batch, ROWS):
            nr = min(ROWS, batch - b0)
            words[:] = 0
            for sub in range(per_word):
                nb = ow * per_word + sub
                if nb >= n_blocks:
                    break
                _run_block(lookup, x, b0, nr, wt, nb, kw, acc, masked, mt)
                for j in range(LANES):
                    o = nb * LANES + j
                    if o < n_out:
                        for r in range(nr):
                            z = np.int32(n_active[o]) - 2 * np.int32(acc[r, j])
                            if (z >= threshold[o]) != (flip[o] != 0):
                                words[r] |= np.uint64(1) << np.uint64(o - ow * 64)
            for r in range(nr):
                out[b0 + r, ow] = words[r]

@njit(fastmath=True, cache=True)
def _conv_rows(xp, wt, b, y, x0, nr, nb, kh, kw_, stride, acc, lookup):
    """The lookup path of :func:`conv`: one pixel at a time."""
    cw = xp.shape[3]
    for i in range(kh):
        for jj in range(kw_):
            for c in range(cw):
                k = (i * kw_ + jj) * cw + c
                for r in range(nr):
                    a = xp[b, y * stride + i, (x0 + r) * stride + jj, c]
                    if lookup:
                        for j in range(LANES):
                            acc[r, j] += _lookup(a ^ wt[nb, k, j])
                    else:
                        for j in range(LANES):
                            acc[r, j] += _ctpop(a ^ wt[nb, k, j])


@njit(fastmath=True, parallel=True, cache=True)
def conv(xp, wt, kh, kw_, stride, n_bits, n_out, oh, ow, out, lookup, threads):
    """Binary convolution: ``out[b, y, x, o]`` (int32, NHWC) = the ±1 dot of a window and filter ``o``.

    ``xp`` is the input padded with +1 bits, (B, H + 2p, W + 2p, cw) words packed along
    channels (channel tail bits 0); filters are packed as (kh, kw, cw) words in ``wt``'s
    blocks; ``n_bits`` = kh·kw·channels. Output pixels are taken ROWS (8) at a time along a row,
    every window a row of the "im2col" matrix that is never built.
    """
    batch, hp, wp, cw = xp.shape
    taps = wt.shape[1]
    tiles = (ow + ROWS - 1) // ROWS
    for task in prange(wt.shape[0] * batch * oh):
        nb = task // (batch * oh)
        rem = task % (batch * oh)
        b = rem // oh
        y = rem % oh
        acc = np.zeros((ROWS, LANES), np.uint64)
        for t in range(tiles):
            x0 = t * ROWS
            nr = min(ROWS, ow - x0)
            acc[:, :] = 0
            if lookup:
                _conv_rows(xp, wt, b, y, x0, nr, nb, kh, kw_, stride, acc, lookup)
            else:
                # one segment per kernel row: the kw_·cw words of a window row are contiguous
                xa = _addr(xp, ((b * hp + y * stride) * wp + x0 * stride) * cw)
                wa = _addr(wt, nb * taps * LANES)
                if nr == ROWS:
                    _tile_rows(xa, stride * cw, wa, kw_ * cw, _addr(acc, 0), kh, wp * cw)
                else:
                    for r in range(nr):
                        xr = xa + np.uint64(8 * r * stride * cw)
                        _tile_one(xr, 0, wa, kw_ * cw, _addr(acc, r * LANES), kh, wp * cw)
            for j in range(LANES):
                o = nb * LANES + j
                if o < n_out:
                    for r in range(nr):
                        out[b, y, x0 + r, o] = np.int32(n_bits) - 2 * np.int32(acc[r, j])
