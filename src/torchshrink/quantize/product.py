"""Product quantization of weight matrices (Gong et al. 2014 §3.3; Jégou et al. 2011).

The sub-vector layout and the k-means below are shared with residual quantization
(:mod:`torchshrink.quantize.residual`).

**Layout.** A weight of shape ``[out, in...]`` is viewed row-major as ``W`` of shape
``[out, D]`` (``D = prod(in...)``; for a convolution ``in * kh * kw``). Each row is cut
into ``S = ceil(D / d)`` sub-vectors of length ``d``; when ``d`` does not divide ``D``
the rows are padded on the right with ``pad = S*d - D`` zeros before cutting (the
padding is dropped again after decoding, so it never reaches the layer). ``d`` larger
than ``D`` is reduced to ``D``.

**Product quantization** (Gong §3.3.1, "PQ"): for every sub-space ``s`` the ``out``
sub-vectors ``W[:, s*d:(s+1)*d]`` are clustered by k-means into ``K`` codewords
(``K`` is capped at ``out``: there are only ``out`` points to cluster). Stored:
``codebooks [S, K, d]`` (trainable) and ``codes [out, S]``; decoding is the gather
``W_hat[o, s] = codebooks[s, codes[o, s]]``.

The k-means is Lloyd's algorithm on all sub-spaces at once (float64 on the weight's
device, seeded Forgy initialization from distinct rows, an empty cluster keeps its
centroid, deterministic on every device); the final codes are the nearest stored
float32 codewords. Gradients reach each codeword summed over the
rows that use it, as for scalar weight sharing. These transforms do not preserve pruning:
zeros are quantized like any other value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core.params import Interval, check
from ..core.select import select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import WeightTransform, attach, original, packer
from ..errors import ModelError
from .kmeans import index_dtype

MAX_CODEWORDS = 1 << 16
SUBVECTOR = Interval(int, 1, 1 << 31)
CODEWORDS = Interval(int, 1, MAX_CODEWORDS)
ITERS = Interval(int, 0, 1 << 31)
#: Defaults of the Python API and the recipe stage alike: d = 4, K = 256 (uint8 codes).
SUBVECTOR_DEFAULT, CODEWORDS_DEFAULT = 4, 256


def _check_int(value: Any, name: str, constraint: Interval) -> int:
    return check(value, name, "product_quantize", constraint)


def layout(shape: Sequence[int], subvector: int | None) -> tuple[int, int, int, int]:
    """``(out, D, d, S)`` for a weight ``shape`` and a sub-vector length (``None`` = whole row)."""
    out, depth = int(shape[0]), math.prod(int(s) for s in shape[1:])
    d = depth if subvector is None else min(_check_int(subvector, "subvector", SUBVECTOR), depth)
    return out, depth, d, -(-depth // d)


def subvectors(weight: torch.Tensor, d: int) -> torch.Tensor:
    """``[S, out, d]`` sub-vectors of ``weight`` viewed as ``[out, D]`` (zero-padded rows)."""
    w2 = weight.reshape(weight.shape[0], -1)
    pad = -w2.shape[1] % d
    if pad:
        w2 = torch.nn.functional.pad(w2, (0, pad))
    return w2.reshape(w2.shape[0], -1, d).transpose(0, 1)


def _blocks(S: int, per_subspace: int, chunk_elems: int = 1 << 22) -> list[slice]:
    """Blocks of sub-spaces whose temporaries hold about ``chunk_elems`` numbers each."""
    step = max(1, chunk_elems // max(1, per_subspace))
    return [slice(a, a + step) for a in range(0, S, step)]


def _nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``c[s]`` for every row of ``x[s]`` (ties: lowest index).

    ``||x - c||^2 - ||x||^2`` is formed for a block of sub-spaces at a time, so memory
    stays bounded whatever the layer size.
    """
    S, n, _ = x.shape
    k = c.shape[1]
    out = torch.empty(S, n, dtype=torch.int64, device=x.device)
    for sl in _blocks(S, n * k):
        cs = c[sl]
        dist = torch.baddbmm((cs * cs).sum(-1).unsqueeze(1), x[sl], cs.transpose(1, 2), alpha=-2)
        out[sl] = dist.argmin(-1)
    return out


def _means(x: torch.Tensor, codes: torch.Tensor, c: torch.Tensor, onehot: bool | None = None) -> torch.Tensor:
    """Lloyd's update: each codeword becomes the mean of its rows (an empty one stays put).

    On the CPU the sums are an ``index_add_`` (deterministic there); on other devices,
    where scatter-adds are atomic and not reproducible, one-hot matrix products
    (``onehot`` forces either way).
    """
    S, n, d = x.shape
    k = c.shape[1]
    if onehot is None:
        onehot = x.device.type != "cpu"
    if not onehot:
        flat = (codes + torch.arange(S).unsqueeze(1) * k).reshape(-1)
        sums = torch.zeros(S * k, d, dtype=x.dtype).index_add_(0, flat, x.reshape(-1, d))
        counts = torch.bincount(flat, minlength=S * k).to(x.dtype).unsqueeze(1)
        return torch.where(counts > 0, sums / counts.clamp_min(1), c.reshape(-1, d)).reshape(S, k, d)
    new = torch.empty_like(c)
    labels = torch.arange(k, device=x.device).view(1, k, 1)
    for sl in _blocks(S, n * k):
        member = (codes[sl].unsqueeze(1) == labels).to(x.dtype)  # [block, k, n]
        counts = member.sum(-1, keepdim=True)
        sums = torch.bmm(member, x[sl])
        new[sl] = torch.where(counts > 0, sums / counts.clamp_min(1), c[sl])
    return new


@torch.no_grad()
def kmeans_subspaces(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means of the rows of each ``x[s]`` (``x``: ``[S, n, d]``) into ``k <= n`` codewords.

    Runs in float64 on ``x``'s device (seeded Forgy start: ``k`` distinct rows where
    there are that many). Returns float32 codebooks ``[S, k, d]`` and int64 codes
    ``[n, S]``, each row's nearest stored codeword.
    """
    iters = _check_int(iters, "iters", ITERS)
    S, n, d = x.shape
    xd = x.detach().to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    c = torch.empty(S, k, d, dtype=torch.float64, device=x.device)
    for s in range(S):  # distinct values first so no two codewords start equal
        uniq = torch.unique(xd[s], dim=0)
        pick = uniq[torch.randperm(uniq.shape[0], generator=gen)[:k].to(x.device)]
        extra = xd[s][torch.randperm(n, generator=gen)[: k - pick.shape[0]].to(x.device)]
        c[s] = torch.cat([pick, extra])
    codes = None
    for _ in range(iters):
        new = _nearest(xd, c)
        if codes is not None and torch.equal(new, codes):
            break
        codes = new
        c = _means(xd, codes, c)
    c32 = c.to(torch.float32)
    return c32, _nearest(xd, c32.to(torch.float64)).T.contiguous()


def _gather(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[out, S, d]``: ``codebooks[s, codes[o, s]]``."""
    return codebooks[torch.arange(codebooks.shape[0], device=codes.device), codes]


class _VQ(WeightTransform):
    """Shared plumbing: shape bookkeeping and the un-pad / reshape of a decoded ``[out, S, d]``."""

    def _setup(self, shape: Sequence[int], d: int, S: int) -> None:
        self.shape = tuple(int(s) for s in shape)
        _, self.depth, _, _ = layout(self.shape, None)
        self.subvector, self.n_sub = int(d), int(S)
        self.pad = S * d - self.depth

    def _finish(self, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return rows.reshape(self.shape[0], -1)[:, : self.depth].reshape(self.shape).to(w.dtype)

    def _check_input(self, w_in: torch.Tensor) -> None:
        if tuple(w_in.shape) != self.shape:
            raise ModelError(f"pack() got an input of shape {tuple(w_in.shape)} for a weight of shape {self.shape}.")


class ProductQuantized(_VQ):
    """``w ↦ decode(codebooks, codes)``: product quantization along the input dimension.

    Attributes:
        codebooks: trainable float32 ``[S, K, d]``.
        codes: int64 buffer ``[out, S]``.
        subvector, pad, shape: the layout (see the module docstring).
    """

    def __init__(self, codebooks: torch.Tensor, codes: torch.Tensor, shape: Sequence[int]) -> None:
        super().__init__()
        S, K, d = codebooks.shape
        self._setup(shape, d, S)
        if tuple(codes.shape) != (self.shape[0], S) or self.pad < 0 or self.pad >= d:
            raise ModelError(
                f"codebooks {tuple(codebooks.shape)} and codes {tuple(codes.shape)} do not fit shape {self.shape}."
            )
        self.codebooks = nn.Parameter(codebooks.detach().to(torch.float32).clone())
        self.register_buffer("codes", codes.to(torch.int64).clone())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, subvector: int = SUBVECTOR_DEFAULT,
                    codewords: int = CODEWORDS_DEFAULT, *, iters: int = 20, seed: int = 0,
                    name: str = "layer") -> ProductQuantized:
        """Product-quantize ``weight`` with ``codewords`` (capped at ``out``) per sub-space."""
        check_weight(weight, name)
        out, _, d, _ = layout(weight.shape, subvector)
        k = min(_check_int(codewords, "codewords", CODEWORDS), out)
        cb, codes = kmeans_subspaces(subvectors(weight.detach(), d), k, iters, seed)
        return cls(cb, codes, weight.shape).to(weight.device)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._finish(_gather(self.codebooks, self.codes), w)

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        """The "pq" packed form (:mod:`torchshrink.forms.pq`; ``codes`` uint8 when ``K <= 256``, else uint16).

        The output depends on codebooks and codes only; ``w_in``'s shape must match.
        """
        self._check_input(w_in)
        cb = self.codebooks.detach().to("cpu", torch.float32).numpy().copy()
        return {"form": "pq", "shape": list(self.shape), "codebooks": cb,
                "codes": self.codes.cpu().numpy().astype(index_dtype(cb.shape[1])),
                "subvector": self.subvector, "pad": self.pad}

    def extra_repr(self) -> str:
        S, K, d = self.codebooks.shape
        return f"shape={self.shape}, subspaces={S}, codewords={K}, subvector={d}, pad={self.pad}"


def check_weight(weight: torch.Tensor, name: str) -> None:
    if weight.dim() < 2:
        raise ModelError(f"layer {name!r} has a {weight.dim()}-d weight; vector quantization needs [out, in...]")
    if not bool(torch.isfinite(weight).all()):
        raise ModelError(f"layer {name!r} has NaN or infinite weights; fix or retrain it before quantizing")


def attach_all(model: nn.Module, layers, exclude, build) -> nn.Module:
    """Attach ``build(weight, name)`` to every selected layer (none already quantized); freeze the latent."""
    chosen = select_layers(model, layers, exclude)
    for name, layer in chosen:
        if packer(layer) is not None:
            raise ModelError(f"layer {name!r} is already quantized; build the model again to quantize it differently")
        check_weight(layer.weight, name)
    for name, layer in chosen:
        attach(layer, build(layer.weight, name))
        original(layer).requires_grad_(False)
    return model


def product_quantize(model: nn.Module, subvector: int = SUBVECTOR_DEFAULT, codewords: int = CODEWORDS_DEFAULT, *,
                     layers: Sequence[str] | str | None = None, exclude: Sequence[str] | str | None = None,
                     iters: int = 20, seed: int = 0) -> nn.Module:
    """Attach :class:`ProductQuantized` to the selected layers (in place, after existing transforms).

    ``subvector`` is ``d``; ``codewords`` is ``K`` per sub-space (capped at the layer's
    number of rows). The latent weight is frozen; the codebooks are trainable.
    """
    _check_int(subvector, "subvector", SUBVECTOR)
    _check_int(codewords, "codewords", CODEWORDS)
    return attach_all(model, layers, exclude, lambda w, name: ProductQuantized.from_weight(
        w, subvector, codewords, iters=iters, seed=seed, name=name))


def storage_bits(m: int, n: int, d: int, k: int) -> float:
    """Bits of one PQ layer: float32 codebooks ``k * S * d`` plus ``m * S`` codes of ``log2 k`` bits."""
    if min(m, n, d, k) <= 0:
        raise ModelError("compression rates need m, n, d and k > 0.")
    S = -(-n // d)
    return 32.0 * k * S * d + math.log2(k) * m * S


def compression_rate_pq(m: int, n: int, d: int, k: int) -> float:
    """Compression rate of PQ on an ``m x n`` float32 matrix (Gong et al. 2014 §3.3.1).

    The ``n`` columns form ``S = n/d`` sub-spaces; each stores ``k`` codewords of ``d``
    floats (``32 k n`` bits in all) and ``m`` codes of ``log2 k`` bits (``log2(k) m n / d``):
    ``rate = 32 m n / (32 k n + log2(k) m n / d)``. When ``d`` does not divide ``n`` the
    padded width ``S d`` (``S = ceil(n/d)``) replaces ``n`` in the denominator.
    """
    return 32.0 * m * n / storage_bits(m, n, d, k)


# ---------------------------------------------------------------- the recipe stage
class PQSpec(LayerStage):
    """Gong et al. 2014 §3.2: product quantization along the input dimension."""

    technique: Literal["pq"]
    subvector: int = SUBVECTOR.field(SUBVECTOR_DEFAULT, description="sub-vector length d")
    codewords: int = Interval(int, 2, MAX_CODEWORDS).field(CODEWORDS_DEFAULT, description="codewords K per sub-space")


def _apply(ctx: Any, spec: PQSpec, finetune: Any) -> Step:
    product_quantize(ctx.model, subvector=spec.subvector, codewords=spec.codewords, layers=spec.layers,
                     exclude=spec.exclude)
    return Step()


TECHNIQUE = Technique("pq", PQSpec, _apply)
