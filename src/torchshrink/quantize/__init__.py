"""Quantization: weight sharing by k-means (Deep Compression), product and residual
quantization, Q-CNN, ternary, binary and bitwise networks.

The building blocks live in submodules (e.g. :mod:`torchshrink.quantize.kmeans1d`);
the public ``torchshrink.quantize`` API is assembled here as techniques land.
"""

from __future__ import annotations
