"""Residual quantization of weight matrices (Gong et al. 2014 §3.3.2, "RQ").

Stage 1 quantizes ``W`` as product quantization does (:mod:`torchshrink.quantize.product`,
same sub-vector layout), stage ``t`` quantizes the residual
``W - (stage_1 + ... + stage_{t-1})`` left by the earlier stages. The decoded weight is
the float32 sum ``((stage_1 + stage_2) + stage_3) + ...`` in that fixed order, the order
the ``rq`` form's decoder uses too. The default ``d`` is the whole row (``S = 1``),
Gong's setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core.params import Interval, check
from ..core.technique import LayerStage, Step, Technique
from ..errors import ModelError
from .kmeans import index_dtype
from .product import (CODEWORDS, CODEWORDS_DEFAULT, MAX_CODEWORDS, SUBVECTOR, SUBVECTOR_DEFAULT, _gather, _VQ,
                      attach_all, check_weight, kmeans_subspaces, layout, storage_bits, subvectors)

STAGES = Interval(int, 1, 64)
STAGES_DEFAULT = 2


class ResidualQuantized(_VQ):
    """``w ↦ stage_0 + stage_1 + ...`` (float32, in stage order): residual quantization.

    Attributes:
        codebooks: trainable float32 ``[T, S, K, d]`` (``T`` stages).
        codes: int64 buffer ``[T, out, S]``.
    """

    def __init__(self, codebooks: torch.Tensor, codes: torch.Tensor, shape: Sequence[int]) -> None:
        super().__init__()
        T, S, K, d = codebooks.shape
        self._setup(shape, d, S)
        if tuple(codes.shape) != (T, self.shape[0], S) or self.pad < 0 or self.pad >= d:
            raise ModelError(
                f"codebooks {tuple(codebooks.shape)} and codes {tuple(codes.shape)} do not fit shape {self.shape}."
            )
        self.codebooks = nn.Parameter(codebooks.detach().to(torch.float32).clone())
        self.register_buffer("codes", codes.to(torch.int64).clone())

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, stages: int = STAGES_DEFAULT, codewords: int = CODEWORDS_DEFAULT,
                    subvector: int | None = None,
                    *, iters: int = 20, seed: int = 0, name: str = "layer") -> ResidualQuantized:
        """Quantize ``weight`` in ``stages`` rounds, each on the float32 residual of the previous ones."""
        check_weight(weight, name)
        stages = check(stages, "stages", "residual_quantize", STAGES)
        out, _, d, _ = layout(weight.shape, subvector)
        k = min(check(codewords, "codewords", "residual_quantize", CODEWORDS), out)
        target = subvectors(weight.detach().to(torch.float32), d)  # [S, out, d]
        residual, decoded = target, None
        books, all_codes = [], []
        for t in range(stages):
            cb, codes = kmeans_subspaces(residual, k, iters, seed + t)
            part = _gather(cb, codes).transpose(0, 1)
            decoded = part if decoded is None else decoded + part  # forward's order of additions
            residual = target - decoded
            books.append(cb)
            all_codes.append(codes)
        return cls(torch.stack(books), torch.stack(all_codes), weight.shape).to(weight.device)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        total = _gather(self.codebooks[0], self.codes[0])
        for t in range(1, self.codebooks.shape[0]):
            total = total + _gather(self.codebooks[t], self.codes[t])
        return self._finish(total, w)

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        """The "rq" packed form (:mod:`torchshrink.forms.rq`): one ``{"codebooks", "codes"}`` per stage, in order."""
        self._check_input(w_in)
        cb = self.codebooks.detach().to("cpu", torch.float32).numpy()
        dt = index_dtype(cb.shape[2])
        return {"form": "rq", "shape": list(self.shape),
                "stages": [{"codebooks": cb[t].copy(), "codes": self.codes[t].cpu().numpy().astype(dt)}
                           for t in range(cb.shape[0])],
                "subvector": self.subvector, "pad": self.pad}

    def extra_repr(self) -> str:
        T, S, K, d = self.codebooks.shape
        return f"shape={self.shape}, stages={T}, subspaces={S}, codewords={K}, subvector={d}, pad={self.pad}"


def residual_quantize(model: nn.Module, stages: int = STAGES_DEFAULT, codewords: int = CODEWORDS_DEFAULT,
                      subvector: int | None = None, *,
                      layers: Sequence[str] | str | None = None, exclude: Sequence[str] | str | None = None,
                      iters: int = 20, seed: int = 0) -> nn.Module:
    """Attach :class:`ResidualQuantized` (``stages`` rounds; ``subvector=None`` = whole rows)."""
    check(stages, "stages", "residual_quantize", STAGES)
    check(codewords, "codewords", "residual_quantize", CODEWORDS)
    if subvector is not None:
        check(subvector, "subvector", "residual_quantize", SUBVECTOR)
    return attach_all(model, layers, exclude, lambda w, name: ResidualQuantized.from_weight(
        w, stages, codewords, subvector, iters=iters, seed=seed, name=name))


def compression_rate_rq(m: int, n: int, k: int, stages: int, d: int | None = None) -> float:
    """Compression rate of ``stages``-stage RQ on an ``m x n`` float32 matrix (Gong et al. 2014 §3.3.2).

    Every stage stores its own codebooks and codes; with whole rows (``d = n``, Gong's
    setting) a stage costs ``32 k n + log2(k) m`` bits:
    ``rate = 32 m n / (t (32 k n + log2(k) m))``. With sub-vectors of length ``d`` each
    stage costs what PQ does (:func:`compression_rate_pq`).
    """
    if stages <= 0:
        raise ModelError("compression_rate_rq needs stages > 0.")
    return 32.0 * m * n / (stages * storage_bits(m, n, n if d is None else d, k))


# ---------------------------------------------------------------- the recipe stage
class RQSpec(LayerStage):
    """Gong et al. 2014 §3.3: residual quantization, stage by stage."""

    technique: Literal["rq"]
    stages: int = Interval(int, 1, 8).field(STAGES_DEFAULT, description="quantization rounds on the residual")
    subvector: int = SUBVECTOR.field(SUBVECTOR_DEFAULT, description="sub-vector length d (the Python API's "
                                     "default is the whole row, Gong's setting)")
    codewords: int = Interval(int, 2, MAX_CODEWORDS).field(CODEWORDS_DEFAULT,
                                                           description="codewords K per sub-space and stage")


def _apply(ctx: Any, spec: RQSpec, finetune: Any) -> Step:
    residual_quantize(ctx.model, stages=spec.stages, subvector=spec.subvector, codewords=spec.codewords,
                      layers=spec.layers, exclude=spec.exclude)
    return Step()


TECHNIQUE = Technique("rq", RQSpec, _apply)
