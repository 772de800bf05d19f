"""Factorization: low-rank SVD of linear layers (Denton et al. 2014; Gong et al. 2014's baseline)."""

from __future__ import annotations

from .svd import LowRank, LowRankLinear, compression_rate_svd, low_rank, low_rank_params
from .tt import TTLinear, TTMatrix, tt_contract, tt_factorize, tt_modes, tt_svd, tt_to_dense

__all__ = ["LowRank", "LowRankLinear", "compression_rate_svd", "low_rank", "low_rank_params"]
__all__ += ["TTLinear", "TTMatrix", "tt_contract", "tt_factorize", "tt_modes", "tt_svd", "tt_to_dense"]
