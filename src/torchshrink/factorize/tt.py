"""Tensor-Train layers (Novikov et al., "Tensorizing Neural Networks", NIPS 2015).

**TT-matrix** (Novikov §3, Eq. 2-3). A weight ``W`` of shape ``M x N`` with ``M = Π m_k``
and ``N = Π n_k`` (``d`` modes each) is stored as ``d`` cores ``G_k`` of shape
``(r_{k-1}, m_k, n_k, r_k)`` (``r_0 = r_d = 1``)::

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] G_2[:, i_2, j_2, :] ... G_d[:, i_d, j_d, :]

with row index ``i = (i_1..i_d)`` and column index ``j = (j_1..j_d)`` in C order. The
cores hold ``Σ_k r_{k-1} m_k n_k r_k`` numbers instead of ``M N``.

**Initialization.** :func:`tt_svd` is TT-SVD (Oseledets 2011, Alg. 1) of ``W`` reshaped to
the ``d``-way tensor of modes ``(m_k n_k)`` (tensorly's ``tensor_train_matrix``), with a
max rank, or with a relative-error tolerance (the smallest uniform max rank whose
reconstruction error ``||W - W_tt||_F / ||W||_F`` is at most ``tol``). Cores can also be
drawn at random and trained from scratch (:meth:`TTLinear.random` / ``init: random``).

**Forward** (Novikov §4, Eq. 5) without forming ``W``: :func:`tt_contract` applies the
cores from the last to the first; each step is one matrix product on contiguous views
(no transposed copies; see its docstring). Cost ``Σ_k B (Π_{l<k} n_l) r_{k-1} m_k n_k r_k (Π_{l>k} m_l)``
multiply-adds against ``B M N`` for the dense layer.

**In a model.** The recipe stage attaches :class:`TTMatrix`, a weight transform whose
forward is the reconstruction :func:`tt_to_dense` and whose trainable parameters are the
cores; ``save`` stores the weight in the ``tt`` form (its cores, :mod:`torchshrink.forms.tt`)
and ``load`` runs it by contraction or by the reconstructed dense weight, whichever is
faster for the layer (:mod:`torchshrink.runtime.tt`). No surgery is needed: the decoded
model (``load(dense=True)``) is the plain zoo architecture. A convolution uses its
reshaped kernel ``[out, in·kh·kw]`` (``N = in·kh·kw``). With ``bias=True`` the bias becomes a
TT-vector (a TT-matrix with in modes all 1) under the same transform, so a layer whose
weight compresses far more than its bias can hold (fc1 of the recipe: 800 cores against a
1,024-entry bias) is compressed as a whole. :class:`TTLinear` is the
stand-alone layer (``from_dense`` by TT-SVD or ``random``, contraction forward) for
building TT networks in Python.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..core.params import Interval, OneOf, check
from ..core.select import per_layer, select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import WeightTransform, attach, find, original, packer
from ..errors import ModelError

MAX_CORES = 16
CORES = Interval(int, 1, MAX_CORES)
RANK = Interval(int, 1, 1 << 16)
TOL = Interval(float, 0.0, 1.0, "neither")
INIT = OneOf(("svd", "random"))


# ---------------------------------------------------------------- modes
def _primes(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def tt_modes(n: int, d: int) -> list[int]:
    """A balanced factorization of ``n`` into ``d`` modes (largest first; 1s where ``n`` has too few primes).

    Prime factors are given, largest first, to the currently smallest mode.
    """
    n = check(n, "n", "tt_modes", Interval(int, 1, None))
    d = check(d, "cores", "tt_modes", CORES)
    modes = [1] * d
    for p in sorted(_primes(n), reverse=True):
        modes[modes.index(min(modes))] *= p
    return sorted(modes, reverse=True)


def check_modes(out_modes: Sequence[int], in_modes: Sequence[int], m: int, n: int, name: str) -> tuple[list[int], list[int]]:
    """Validated modes: equal counts, positive, products ``m`` (rows) and ``n`` (columns)."""
    om, im = [int(v) for v in out_modes], [int(v) for v in in_modes]
    if not om or len(om) != len(im) or len(om) > MAX_CORES or min(om + im) < 1:
        raise ModelError(f"layer {name!r}: out and in modes must be two lists of 1..{MAX_CORES} positive ints "
                         f"of equal length. Got {om} and {im}.")
    if math.prod(om) != m or math.prod(im) != n:
        raise ModelError(f"layer {name!r}: modes {om} x {im} multiply to {math.prod(om)} x {math.prod(im)}, "
                         f"the weight is {m} x {n}.")
    return om, im


def full_ranks(out_modes: Sequence[int], in_modes: Sequence[int], max_rank: int) -> list[int]:
    """``[1, r_1, ..., r_{d-1}, 1]``: ``max_rank`` capped by what the unfoldings allow."""
    sizes = [a * b for a, b in zip(out_modes, in_modes)]
    d = len(sizes)
    return [1] + [min(max_rank, math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, d)] + [1]


def tt_params(cores: Sequence[Any]) -> int:
    """Numbers held by the cores."""
    return int(sum(math.prod(c.shape) for c in cores))


# ---------------------------------------------------------------- functional
def tt_to_dense(cores: Sequence[torch.Tensor], exact: bool | None = None) -> torch.Tensor:
    """``W`` (``M x N``, the cores' dtype) from TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)`` (Eq. 2).

    ``exact`` (default: whenever autograd is off, i.e. evaluation, saving and loading)
    computes in float64 and rounds once, so the result does not depend on the order of
    BLAS sums at float32 precision; the ``tt`` form's decode runs this very path, so a
    saved file reproduces the evaluated model bit for bit. Training steps use float32.
    """
    dtype = cores[0].dtype
    exact = not torch.is_grad_enabled() if exact is None else exact
    work = torch.float64 if exact else dtype
    acc = cores[0].to(work).reshape(-1, cores[0].shape[-1])  # (m1 n1, r1)
    for g in cores[1:]:
        acc = (acc @ g.to(work).reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
    d = len(cores)
    mn = [s for g in cores for s in g.shape[1:3]]  # m1, n1, m2, n2, ...
    t = acc.reshape(mn).permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    m, n = math.prod(mn[0::2]), math.prod(mn[1::2])
    return t.reshape(m, n).to(dtype)


def tt_contract(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x @ W.T`` for ``x`` of shape ``(B, N)`` without forming ``W`` (Novikov Eq. 5).

    Cores are applied from the last to the first, each as ONE matrix product on
    contiguous views, with no transposed copy at any step. The state after core ``k`` is
    ``(b, j_1..j_{k-1}, r_{k-1}, i_k..i_d)`` in C order: the batch leads, the input modes
    still to be summed follow, then the rank, then the output modes already produced.
    Core ``k-1`` seen as the ``(r_{k-2} m_{k-1}) x (n_{k-1} r_{k-1})`` matrix ``G``
    contracts the adjacent pair ``(j_{k-1}, r_{k-1})``: viewing the state as
    ``(A, n_{k-1} r_{k-1}, C)`` (``A = b j_1..j_{k-2}``, ``C = i_k..i_d``), the step is
    ``G @ state`` broadcast over ``A``, whose result ``(A, r_{k-2} m_{k-1}, C)`` is again
    the state in that order. The last core goes first, as the plain product
    ``x.view(-1, n_d) @ G_d.T``; after the first core the state is ``(b, i_1..i_d)``: ``y``.

    Cost (multiply-adds): ``Σ_k B (Π_{l<k} n_l) r_{k-1} m_k n_k r_k (Π_{l>k} m_l)``
    (:func:`tt_flops`). Works for merged cores too (:func:`tt_merge`), which is how the
    runtime trades a few more stored numbers for fewer, larger products.
    """
    b = x.shape[0]
    r0, m, n, _ = cores[-1].shape
    t = torch.nn.functional.linear(x.reshape(-1, n), cores[-1].reshape(r0 * m, n))  # (b, j_<d, r_{d-1}, i_d)
    c = m
    for g in reversed(cores[:-1]):
        r0, m, n, r1 = g.shape
        t = torch.matmul(g.reshape(r0 * m, n * r1), t.reshape(-1, n * r1, c))  # (b, j_<k, r_{k-1}, i_k..i_d)
        c *= m
    return t.reshape(b, c)


def tt_flops(out_modes: Sequence[int], in_modes: Sequence[int], ranks: Sequence[int], batch: int = 1) -> int:
    """Multiply-adds of :func:`tt_contract` for cores of these modes and ranks ``[1, r_1, .., 1]``."""
    d = len(out_modes)
    return batch * sum(math.prod(in_modes[:k]) * ranks[k] * out_modes[k] * in_modes[k] * ranks[k + 1]
                       * math.prod(out_modes[k + 1:]) for k in range(d))


def _grouped(sizes: Sequence[int], groups: Sequence[int]) -> list[int]:
    out, at = [], 0
    for g in groups:
        out.append(math.prod(sizes[at:at + g]))
        at += g
    return out


def tt_plan(out_modes: Sequence[int], in_modes: Sequence[int], ranks: Sequence[int]) -> list[int]:
    """Group sizes (consecutive cores merged by :func:`tt_merge`) minimizing :func:`tt_flops`.

    Merging cores ``k..l`` into one (modes ``Π m``, ``Π n``, outer ranks ``r_{k-1}``, ``r_l``)
    removes the inner ranks from the products, which can cost fewer multiply-adds than the
    core-by-core chain (modes ``8^4``, rank 8: pairs cost 268M at batch 64 against 302M,
    and two large products run faster than four small ones). A single group is the dense
    weight itself and is never chosen for ``d > 1``; ties go to fewer groups. The cost is
    linear in the batch, so the plan does not depend on it.
    """
    d = len(out_modes)
    best: tuple[int, int, list[int]] | None = None
    for mask in range(1 << (d - 1)):  # bit k set: a cut between cores k and k+1
        cuts = [k + 1 for k in range(d - 1) if mask >> k & 1]
        if d > 1 and not cuts:
            continue
        bounds = [0, *cuts, d]
        groups = [b - a for a, b in zip(bounds, bounds[1:])]
        cost = tt_flops(_grouped(out_modes, groups), _grouped(in_modes, groups), [ranks[a] for a in bounds])
        if best is None or (cost, len(groups)) < best[:2]:
            best = (cost, len(groups), groups)
    return best[2]


def tt_merge(cores: Sequence[torch.Tensor], groups: Sequence[int]) -> list[torch.Tensor]:
    """Cores with each run of ``groups[i]`` consecutive cores contracted over their inner ranks
    into one core ``(r_{k-1}, Π m, Π n, r_l)`` (float64 products, rounded once to the cores' dtype)."""
    if sum(groups) != len(cores) or min(groups, default=0) < 1:
        raise ModelError(f"tt_merge: groups {list(groups)} do not split {len(cores)} cores.")
    out, at = [], 0
    for g in groups:
        acc = cores[at].to(torch.float64)
        for c in cores[at + 1:at + g]:
            r0, m, n, _ = acc.shape
            _, m2, n2, r1 = c.shape
            acc = torch.einsum("aijr,rklb->aikjlb", acc, c.to(torch.float64)).reshape(r0, m * m2, n * n2, r1)
        out.append(acc.to(cores[at].dtype).contiguous())
        at += g
    return out


def tt_svd(weight: torch.Tensor, out_modes: Sequence[int], in_modes: Sequence[int], *,
           rank: int | None = None, tol: float | None = None, name: str = "layer") -> list[torch.Tensor]:
    """TT-SVD cores of a ``[M, N...]`` weight (float32, on the weight's device).

    Exactly one of ``rank`` (max TT rank) and ``tol`` (max relative Frobenius error; the
    smallest uniform max rank meeting it, by bisection) must be given.
    """
    from tensorly.decomposition import tensor_train_matrix

    if (rank is None) == (tol is None):
        raise ModelError(f"layer {name!r}: give exactly one of 'rank' and 'tol' for TT-SVD.")
    w2 = weight.detach().reshape(weight.shape[0], -1)
    if not bool(torch.isfinite(w2).all()):
        raise ModelError(f"layer {name!r} has NaN or infinite weights; fix or retrain it before factorizing")
    om, im = check_modes(out_modes, in_modes, w2.shape[0], w2.shape[1], name)
    tensor = w2.cpu().to(torch.float64).numpy().reshape(om + im)  # (m_1..m_d, n_1..n_d)

    def decompose(r: int) -> list[torch.Tensor]:
        tt = tensor_train_matrix(tensor, full_ranks(om, im, r))
        return [torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)) for c in tt.factors]

    if rank is not None:
        cores = decompose(check(rank, "rank", "tt_svd", RANK))
    else:
        tol = check(tol, "tol", "tt_svd", TOL)
        ref, norm = w2.cpu().to(torch.float64), float(w2.double().norm()) or 1.0

        def err(cs: list[torch.Tensor]) -> float:
            return float((tt_to_dense([c.double() for c in cs]) - ref).norm()) / norm

        lo, hi = 1, max(full_ranks(om, im, 1 << 30))
        best = decompose(hi)
        while lo < hi:
            mid = (lo + hi) // 2
            cs = decompose(mid)
            if err(cs) <= tol:
                hi, best = mid, cs
            else:
                lo = mid + 1
        cores = best
    return [c.to(weight.device) for c in cores]


def random_cores(out_modes: Sequence[int], in_modes: Sequence[int], rank: int, *, fan_in: int,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Random cores for training from scratch: Gaussian entries scaled so ``W``'s entries
    have variance ``1 / fan_in`` (each entry of ``W`` is a sum of ``Π r_k`` products of
    ``d`` core entries)."""
    ranks = full_ranks(out_modes, in_modes, check(rank, "rank", "random_cores", RANK))
    d = len(out_modes)
    std = (1.0 / (fan_in * math.prod(ranks[1:-1]))) ** (0.5 / d) if d else 1.0
    return [torch.randn(ranks[k], out_modes[k], in_modes[k], ranks[k + 1], generator=generator) * std
            for k in range(d)]


# ---------------------------------------------------------------- modules
class TTMatrix(WeightTransform):
    """``w ↦ tt_to_dense(cores)`` reshaped to ``w``'s shape: a TT weight as a weight transform.

    Attributes:
        cores: trainable ``nn.ParameterList`` of ``(r_{k-1}, m_k, n_k, r_k)`` float32 cores.
        out_modes, in_modes, shape: the factorization and the weight's shape.
    """

    def __init__(self, cores: Sequence[torch.Tensor], shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        om, im = [int(c.shape[1]) for c in cores], [int(c.shape[2]) for c in cores]
        check_modes(om, im, self.shape[0], math.prod(self.shape[1:]), "TTMatrix")
        ranks = [int(c.shape[0]) for c in cores] + [int(cores[-1].shape[-1])]
        if ranks[0] != 1 or ranks[-1] != 1 or any(int(c.shape[-1]) != int(n.shape[0]) for c, n in zip(cores, cores[1:])):
            raise ModelError(f"TTMatrix: core ranks do not chain from 1 to 1: {[tuple(c.shape) for c in cores]}.")
        self.out_modes, self.in_modes, self.ranks = om, im, ranks
        self.cores = nn.ParameterList([nn.Parameter(c.detach().to(torch.float32).clone()) for c in cores])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        exact = not (self.training and torch.is_grad_enabled())  # float32 only inside training steps
        return tt_to_dense(list(self.cores), exact).reshape(self.shape).to(w.dtype)

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        """The ``tt`` packed form (:mod:`torchshrink.forms.tt`): shape and the float32 cores."""
        if tuple(w_in.shape) != self.shape:
            raise ModelError(f"pack() got an input of shape {tuple(w_in.shape)} for a weight of shape {self.shape}.")
        return {"form": "tt", "shape": list(self.shape),
                "cores": [c.detach().to("cpu", torch.float32).numpy().copy() for c in self.cores]}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, out_modes={self.out_modes}, in_modes={self.in_modes}, ranks={self.ranks}"


class TTLinear(nn.Module):
    """A linear layer whose weight is a TT-matrix; ``forward`` contracts the cores with the input."""

    def __init__(self, cores: Sequence[torch.Tensor], bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_modes, self.in_modes = [int(c.shape[1]) for c in cores], [int(c.shape[2]) for c in cores]
        self.out_features, self.in_features = math.prod(self.out_modes), math.prod(self.in_modes)
        self.cores = nn.ParameterList([nn.Parameter(c.detach().to(torch.float32).clone()) for c in cores])
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear, out_modes: Sequence[int] | None = None,
                   in_modes: Sequence[int] | None = None, *, cores: int = 3, rank: int | None = 8,
                   tol: float | None = None) -> TTLinear:
        """TT-SVD of ``linear``'s weight (modes default to :func:`tt_modes` with ``cores`` modes)."""
        om = list(out_modes) if out_modes is not None else tt_modes(linear.out_features, cores)
        im = list(in_modes) if in_modes is not None else tt_modes(linear.in_features, len(om))
        cs = tt_svd(linear.weight, om, im, rank=None if tol is not None else rank, tol=tol)
        return cls(cs, linear.bias)

    @classmethod
    def random(cls, in_features: int, out_features: int, rank: int, *, cores: int = 3, bias: bool = True,
               generator: torch.Generator | None = None) -> TTLinear:
        """Random cores (variance-scaled like ``nn.Linear``'s init) to train from scratch."""
        om, im = tt_modes(out_features, cores), tt_modes(in_features, cores)
        b = torch.zeros(out_features) if bias else None
        return cls(random_cores(om, im, rank, fan_in=in_features, generator=generator), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = tt_contract(x.reshape(-1, self.in_features), list(self.cores)).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        return tt_to_dense(list(self.cores))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"out_modes={self.out_modes}, in_modes={self.in_modes}, params={tt_params(self.cores)}")


# ---------------------------------------------------------------- model-level API
ModesSpec = Mapping[str, Mapping[str, Sequence[int]]]


def _layer_modes(layer: nn.Module, name: str, cores: int, modes: Mapping[str, Any] | None) -> tuple[list[int], list[int]]:
    w = original(layer)
    m, n = int(w.shape[0]), math.prod(int(s) for s in w.shape[1:])
    if modes is None:
        return tt_modes(m, cores), tt_modes(n, cores)
    if not isinstance(modes, Mapping) or set(modes) != {"out", "in"}:
        raise ModelError(f"modes of layer {name!r} must be {{out: [...], in: [...]}}. Got {modes!r}.")
    return check_modes(modes["out"], modes["in"], m, n, name)


def tt_factorize(model: nn.Module, rank: int | Mapping[str, int] | None = 8, *, tol: float | None = None,
                 cores: int = 3, modes: ModesSpec | None = None, init: str = "svd",
                 bias: bool | Mapping[str, bool] = False, layers: Sequence[str] | str | None = None,
                 exclude: Sequence[str] | str | None = None, seed: int = 0) -> nn.Module:
    """Attach :class:`TTMatrix` to the selected Linear / Conv2d layers (in place).

    Args:
        rank: max TT rank, one int or ``{pattern: int}`` (layers no pattern covers are left
            alone); ignored by ``init="svd"`` when ``tol`` is given.
        tol: relative Frobenius error of TT-SVD (instead of ``rank``).
        cores: number of modes ``d`` of the default factorization (:func:`tt_modes`).
        modes: ``{pattern: {"out": [...], "in": [...]}}`` explicit factorizations.
        init: ``"svd"`` (TT-SVD of the trained weight) or ``"random"`` (train from scratch).
        bias: also make each layer's bias a TT-vector (the layer's out modes, in modes all 1,
            the same max rank; TT-SVD of the trained bias), so the layer's parameters, bias
            included, are all TT cores; one bool or ``{pattern: bool}``.
    The latent weight (and bias) is frozen; the cores are trainable.
    """
    init = check(init, "init", "tt_factorize", INIT)
    cores = check(cores, "cores", "tt_factorize", CORES)
    if tol is not None:
        check(tol, "tol", "tt_factorize", TOL)
    chosen = select_layers(model, layers, exclude)
    names = [n for n, _ in chosen]
    ranks = per_layer(rank if rank is not None else 1, names, "rank", lambda v, k: check(v, k, "tt", RANK))
    layer_modes = per_layer(modes, names, "modes") if modes is not None else {}
    tt_bias = per_layer(bias, names, "bias")
    gen = torch.Generator().manual_seed(seed)
    for name, layer in chosen:
        if name not in ranks:
            continue
        if packer(layer) is not None:
            raise ModelError(f"layer {name!r} already has a packed transform; build the model again to factorize it")
        w = layer.weight
        om, im = _layer_modes(layer, name, cores, layer_modes.get(name))
        if init == "svd":
            cs = tt_svd(w, om, im, rank=None if tol is not None else ranks[name], tol=tol, name=name)
        else:
            n_in = math.prod(w.shape[1:])
            cs = [c.to(w.device) for c in random_cores(om, im, ranks[name], fan_in=n_in, generator=gen)]
        attach(layer, TTMatrix(cs, w.shape).to(w.device))
        original(layer).requires_grad_(False)
        if tt_bias.get(name) and getattr(layer, "bias", None) is not None:
            ones = [1] * len(om)
            bs = tt_svd(layer.bias.reshape(-1, 1), om, ones, rank=None if tol is not None else ranks[name], tol=tol,
                        name=f"{name}.bias")
            attach(layer, TTMatrix(bs, layer.bias.shape).to(w.device), "bias")
            original(layer, "bias").requires_grad_(False)
    return model


# ---------------------------------------------------------------- the recipe stage
PosInt = Annotated[int, Field(ge=1)]


class TTSpec(LayerStage):
    """Novikov et al. 2015: layers become TT-matrices (TT-SVD of the trained weight, or random)."""

    technique: Literal["tt"]
    rank: PosInt | dict[str, PosInt] = Field(8, description="max TT rank, or {layer pattern: rank}")
    tol: float | None = Field(None, gt=0, lt=1, description="TT-SVD relative error instead of 'rank'")
    cores: int = CORES.field(3, description="modes d of the default factorization")
    modes: dict[str, dict[Literal["out", "in"], list[PosInt]]] | None = Field(
        None, description="{layer pattern: {out: [...], in: [...]}} explicit factorizations")
    init: Literal["svd", "random"] = Field("svd", description="svd: TT-SVD of the weight; random: train from scratch")
    bias: bool | dict[str, bool] = Field(False, description="also store each layer's bias as a TT-vector (out modes, "
                                         "same max rank); one bool or {layer pattern: bool}")
    sweep: list[PosInt] | None = Field(None, description="also fine-tune a copy at each of these ranks and report "
                                       "accuracy and parameters vs rank (report 'tt_ranks', plot tt_ranks.png)")


def tt_layer_rows(model: nn.Module) -> list[dict[str, Any]]:
    """One row per TT layer: shape, modes, ranks, weight parameters dense vs TT and their ratio."""
    rows = []
    for name, layer in select_layers(model, None, None):
        t = find(layer, TTMatrix)
        if t is not None:
            dense, tt = math.prod(t.shape), tt_params(t.cores)
            bias = 0 if getattr(layer, "bias", None) is None else layer.bias.numel()
            tb = find(layer, TTMatrix, "bias") if bias else None
            bias_tt = bias if tb is None else tt_params(tb.cores)  # what the bias is stored as
            rows.append({"layer": name, "shape": list(t.shape), "out_modes": t.out_modes, "in_modes": t.in_modes,
                         "ranks": t.ranks, "dense_params": dense, "tt_params": tt, "ratio": dense / tt,
                         "bias_params": bias, "bias_tt_params": bias_tt,
                         "ratio_with_bias": (dense + bias) / (tt + bias_tt)})
    return rows


def _factorize(model: nn.Module, spec: TTSpec, rank: Any, seed: int) -> nn.Module:
    return tt_factorize(model, rank, tol=spec.tol, cores=spec.cores, modes=spec.modes, init=spec.init,
                        bias=spec.bias, layers=spec.layers, exclude=spec.exclude, seed=seed)


def _sweep(ctx: Any, spec: TTSpec, finetune: Any) -> list[dict[str, Any]]:
    """Novikov Fig. 1 / Table 1: each rank of ``spec.sweep`` on a copy, fine-tuned, evaluated."""
    import copy

    from ..train import evaluate

    rows = []
    for r in spec.sweep or []:
        branch = _factorize(copy.deepcopy(ctx.model), spec, r, ctx.seed)
        if finetune.epochs > 0:
            ctx.fit(branch, finetune, [], f"{ctx.tag}-rank{r}")
        acc = evaluate(branch, ctx.data.test)["accuracy"]
        layers = tt_layer_rows(branch)
        rows.append({"rank": r, "accuracy": acc, "tt_params": sum(x["tt_params"] for x in layers),
                     "dense_params": sum(x["dense_params"] for x in layers),
                     "tt_params_with_bias": sum(x["tt_params"] + x["bias_tt_params"] for x in layers),
                     "dense_params_with_bias": sum(x["dense_params"] + x["bias_params"] for x in layers),
                     "layers": layers})
        ctx.console.print(f"{ctx.tag}: TT rank {r}: accuracy {acc:.4f}, {rows[-1]['tt_params']:,} TT parameters "
                          f"for {rows[-1]['dense_params']:,} dense")
    return rows


def _apply(ctx: Any, spec: TTSpec, finetune: Any) -> Step:
    if spec.sweep:
        ctx.extra.setdefault("tt_ranks", []).extend(_sweep(ctx, spec, finetune))
    _factorize(ctx.model, spec, spec.rank, ctx.seed)
    ctx.extra.setdefault("tt_layers", []).extend(tt_layer_rows(ctx.model))
    return Step()


TECHNIQUE = Technique("tt", TTSpec, _apply)
