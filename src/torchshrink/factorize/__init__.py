"""Factorization: low-rank SVD of linear layers (Denton et al. 2014; Gong et al. 2014's baseline)."""

from __future__ import annotations

from .svd import LowRank, LowRankLinear, compression_rate_svd, low_rank, low_rank_params

__all__ = ["LowRank", "LowRankLinear", "compression_rate_svd", "low_rank", "low_rank_params"]
