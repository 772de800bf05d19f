"""Quantization: weight sharing by k-means (Deep Compression), product and residual
quantization (Gong et al. 2014); Q-CNN, ternary, binary and bitwise networks as they land.

The building blocks live in submodules (e.g. :mod:`torchshrink.quantize.kmeans1d`);
the public ``torchshrink.quantize`` API is assembled here.
"""

from __future__ import annotations

from .bitwise import BinarySign, TanhSquash
from .kmeans import SharedWeights, compression_rate_kmeans, kmeans
from .product import ProductQuantized, compression_rate_pq, product_quantize
from .qcnn import QCNNQuantized, qcnn_quantize
from .residual import ResidualQuantized, compression_rate_rq, residual_quantize
from .ternary import TrainedTernary, ttq
from .binary import LAB, BinaryWeights, ClipLatent, binarize

__all__ = [
    "BinarySign",
    "TanhSquash",
    "LAB",
    "BinaryWeights",
    "ClipLatent",
    "TrainedTernary",
    "binarize",
    "ttq",
    "ProductQuantized",
    "ResidualQuantized",
    "SharedWeights",
    "compression_rate_kmeans",
    "compression_rate_pq",
    "compression_rate_rq",
    "product_quantize",
    "residual_quantize",
    "kmeans",
]
__all__ += ["QCNNQuantized", "qcnn_quantize"]
