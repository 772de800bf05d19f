"""Quantization: weight sharing by k-means (Deep Compression), product and residual
quantization, Q-CNN, ternary, binary and bitwise networks.

The building blocks live in submodules (e.g. :mod:`torchshrink.quantize.kmeans1d`);
the public ``torchshrink.quantize`` API is assembled here as techniques land.
"""

from __future__ import annotations

from .kmeans import SharedWeights, compression_rate_kmeans, share_weights
from .product import (
    ProductQuantized,
    ResidualQuantized,
    compression_rate_pq,
    compression_rate_rq,
    product_quantize,
    residual_quantize,
)

__all__ = [
    "ProductQuantized",
    "ResidualQuantized",
    "SharedWeights",
    "compression_rate_kmeans",
    "compression_rate_pq",
    "compression_rate_rq",
    "product_quantize",
    "residual_quantize",
    "share_weights",
]
