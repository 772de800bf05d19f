"""Weight sharing by scalar k-means (Han et al. 2016, "Deep Compression" §3; Gong et al. 2014 §3.1).

Each selected layer's nonzero weights are clustered into at most ``2^bits - 1`` groups
with 1-D Lloyd k-means (:func:`torchshrink.quantize.kmeans1d.kmeans1d`); every weight is
then replaced by its group's centroid. Exact zeros (pruned weights) form a group of
their own, fixed at 0.0, so ``2^bits`` levels in all fit in ``bits``-bit indices.

A layer carries a :class:`SharedWeights` parametrization: a trainable ``codebook`` of the
nonzero centroids and a fixed ``indices`` buffer. **Index convention:** ``indices`` holds
0 for an exact zero (pruned) entry and ``j >= 1`` for ``codebook[j - 1]``, i.e. it
indexes the table ``[0.0, *codebook]`` -- the same table :meth:`SharedWeights.pack`
stores, so packing is a dtype cast. The forward pass is a gather from that table, so
autograd hands each centroid the *sum* of the gradients of the weights that share it,
which is the centroid update of Deep Compression §3.1 Eq. 3:
``dL/dC_k = sum_ij dL/dW_ij * 1(I_ij = k)``. Pruned entries gather the constant 0.0 and
stay exactly zero whatever the optimizer does.

The latent weight under the transform no longer influences the output; :func:`kmeans`
freezes it (``requires_grad=False``), so optimizers and DDP only see the codebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..core.params import BITS, OneOf, check
from ..core.select import per_layer, select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import WeightTransform, attach, original, packer
from ..errors import ModelError
from .kmeans1d import INITS, kmeans1d

#: Deep Compression's index widths (§3.2): 5 bits for FC layers, 8 for convolutions.
FC_BITS, CONV_BITS = 5, 8
INIT = OneOf(tuple(INITS))

BitsSpec = int | Mapping[str, int] | None


def check_bits(value: Any, name: str = "bits") -> int:
    """``value`` as an int in ``[1, 16]``, or a :class:`ModelError` in sklearn style."""
    return check(value, name, "kmeans", BITS)


def check_init(init: Any) -> Any:
    """A kmeans1d initialization name, or an array of initial centroids."""
    return check(init, "init", "kmeans", INIT) if isinstance(init, str) else init


def index_dtype(n_entries: int) -> np.dtype:
    """Smallest unsigned dtype of the stored indices: uint8 up to 256 table entries, else uint16."""
    return np.dtype(np.uint8) if n_entries <= 256 else np.dtype(np.uint16)


class SharedWeights(WeightTransform):
    """``w ↦ [0, *codebook][indices]``: k-means weight sharing (Deep Compression §3.1).

    Attributes:
        codebook: trainable float32 parameter of the ``k <= 2^bits - 1`` nonzero centroids
            (sorted ascending when built by :meth:`from_weight`).
        indices: int64 buffer of the weight's shape; 0 = exact zero (pruned),
            ``j >= 1`` = ``codebook[j - 1]``.
        bits: index width the layer was quantized for (``k + 1 <= 2^bits``).
    """

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        codebook = torch.as_tensor(codebook, dtype=torch.float32).reshape(-1)
        if codebook.numel() + 1 > 1 << self.bits:
            raise ModelError(
                f"A {self.bits}-bit SharedWeights holds at most {(1 << self.bits) - 1} centroids. "
                f"Got {codebook.numel()}."
            )
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) > codebook.numel()):
            raise ModelError(f"SharedWeights indices must lie in [0, {codebook.numel()}] (0 = zero).")
        self.codebook = nn.Parameter(codebook.clone())
        self.register_buffer("indices", indices.clone())

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls, weight: torch.Tensor, bits: int, *, init: Any = "linear", max_iter: int = 100, seed: int = 0,
        name: str = "layer",
    ) -> SharedWeights:
        """Cluster the nonzero entries of ``weight`` into at most ``2^bits - 1`` centroids.

        ``init`` is kmeans1d's: ``"linear"`` over ``[min, max]`` (the paper's choice, it
        keeps the rare large weights), ``"density"``, ``"random"`` (seeded) or an array.
        Exact zeros get index 0 and never become a centroid.
        """
        bits = check_bits(bits)
        check_init(init)
        w = weight.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(w).all()):
            raise ModelError(f"layer {name!r} has NaN or infinite weights; fix or retrain it before sharing weights")
        flat = w.reshape(-1).numpy()
        nz = np.flatnonzero(flat)
        indices = np.zeros(flat.size, dtype=np.int64)
        if nz.size == 0:
            centroids = np.zeros(0, dtype=np.float32)
        else:
            k = min((1 << bits) - 1, nz.size)
            c64, labels, _ = kmeans1d(flat[nz], k, init=init, max_iter=max_iter, seed=seed)
            centroids = c64.astype(np.float32)
            indices[nz] = labels + 1
        return cls(torch.from_numpy(centroids), torch.from_numpy(indices).reshape(w.shape), bits).to(weight.device)

    def table(self) -> torch.Tensor:
        """The lookup table ``[0.0, *codebook]`` (index 0 = exact zero)."""
        return torch.cat([self.codebook.new_zeros(1), self.codebook])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.table()[self.indices].to(w.dtype)

    @property
    def n_levels(self) -> int:
        """Entries of the stored table, the zero included (``<= 2^bits``)."""
        return self.codebook.numel() + 1

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        """The "shared" packed form (:mod:`torchshrink.forms.shared`): ``codebook[0] == 0.0``, uint8/uint16 indices.

        The output depends on the codebook and indices only, not on the values of
        ``w_in`` (the transform's input); its shape must match.
        """
        if tuple(w_in.shape) != tuple(self.indices.shape):
            raise ModelError(
                f"pack() got an input of shape {tuple(w_in.shape)} for indices of shape {tuple(self.indices.shape)}."
            )
        table = self.table().detach().to("cpu", torch.float32).numpy().copy()
        return {
            "form": "shared",
            "shape": list(self.indices.shape),
            "codebook": table,
            "indices": self.indices.cpu().numpy().astype(index_dtype(table.size)),
        }

    def extra_repr(self) -> str:
        return f"bits={self.bits}, centroids={self.codebook.numel()}, shape={tuple(self.indices.shape)}"


@torch.no_grad()
def kmeans(
    model: nn.Module,
    bits: BitsSpec = None,
    *,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    init: Any = "linear",
    fc_bits: int = FC_BITS,
    conv_bits: int = CONV_BITS,
    max_iter: int = 100,
    seed: int = 0,
    include_bias: bool = False,
) -> nn.Module:
    """Attach k-means weight sharing to the selected layers of ``model`` (in place).

    Args:
        bits: index width per weight: one int for every layer, ``{pattern: bits}`` (the
            first matching pattern wins; uncovered layers get the type default; a
            pattern that matches no layer is an error), or ``None`` for the type defaults.
        layers / exclude: layer name patterns (``fc*``, ``features.*``).
        init: k-means initialization, ``"linear"`` (default, Deep Compression §3.2),
            ``"density"`` or ``"random"``.
        fc_bits / conv_bits: defaults for linear and convolution layers (the paper's 5 and 8).
        max_iter / seed: passed to :func:`kmeans1d`.
        include_bias: also share each layer's bias (its own codebook, same bits). Deep
            Compression quantizes weights only, where biases are a rounding error (0.15 %
            of LeNet-300-100 on MNIST); on tiny models they can be a quarter of the file.

    The transform goes after any existing one (a pruning :class:`Mask` first), so the
    clustering sees the effective, pruned weight and pruned entries stay zero.
    """
    fc_bits, conv_bits = check_bits(fc_bits, "fc_bits"), check_bits(conv_bits, "conv_bits")
    check_init(init)
    chosen = select_layers(model, layers, exclude)
    given = per_layer(bits, [n for n, _ in chosen], "bits", check_bits)
    plan = [(name, layer, given.get(name, fc_bits if isinstance(layer, nn.Linear) else conv_bits))
            for name, layer in chosen]
    for name, layer, _ in plan:
        if packer(layer) is not None:
            raise ModelError(f"layer {name!r} is already quantized; build the model again to quantize it differently")
        if not bool(torch.isfinite(layer.weight).all()):
            raise ModelError(f"layer {name!r} has NaN or infinite weights; fix or retrain it before sharing weights")
    for name, layer, b in plan:
        sw = SharedWeights.from_weight(layer.weight, b, init=init, max_iter=max_iter, seed=seed, name=name)
        attach(layer, sw)
        original(layer).requires_grad_(False)
        if include_bias and getattr(layer, "bias", None) is not None:
            if not bool(torch.isfinite(layer.bias).all()):
                raise ModelError(f"layer {name!r} has NaN or infinite biases")
            sb = SharedWeights.from_weight(layer.bias, b, init=init, max_iter=max_iter, seed=seed, name=f"{name}.bias")
            attach(layer, sb, "bias")
            original(layer, "bias").requires_grad_(False)
    return model


def compression_rate_kmeans(n_weights: int, bits: float, k: int) -> float:
    """Compression rate of scalar k-means on ``n_weights`` float32 weights (Gong et al. 2014 §3.1).

    Each weight stores a ``bits``-bit index (``log2 k`` in the paper, rounded up in
    practice) and the codebook stores ``k`` float32 values:
    ``rate = 32 n / (bits n + 32 k)``.
    """
    if n_weights <= 0 or bits <= 0 or k <= 0:
        raise ModelError("compression_rate_kmeans needs n_weights, bits and k > 0.")
    return 32.0 * n_weights / (bits * n_weights + 32.0 * k)



# ---------------------------------------------------------------- the recipe stage
Bits = BITS.type


class KMeansSpec(LayerStage):
    """Deep Compression §3 / Gong et al. 2014: per-layer scalar k-means weight sharing."""

    technique: Literal["kmeans"]
    bits: Bits | dict[str, Bits] | None = Field(None, description="bits per layer; default by type")
    fc_bits: Bits = Field(FC_BITS, description="default for Linear layers")
    conv_bits: Bits = Field(CONV_BITS, description="default for convolutions")
    init: Literal[tuple(INITS)] = Field("linear", description="centroid initialization")  # type: ignore[valid-type]
    include_bias: bool = Field(False, description="also share biases (own codebook per layer)")


def _apply(ctx: Any, spec: KMeansSpec, finetune: Any) -> Step:
    kmeans(ctx.model, spec.bits, layers=spec.layers, exclude=spec.exclude, init=spec.init,
                  fc_bits=spec.fc_bits, conv_bits=spec.conv_bits, include_bias=spec.include_bias)
    return Step()


TECHNIQUE = Technique("kmeans", KMeansSpec, _apply)
