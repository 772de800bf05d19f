"""Automated per-layer policies under a budget (HAQ / AMC in spirit), with measured costs."""

from .profile import Entry, holdout, profile
from .search import Choice, Option, knapsack, uniform
from .settings import Setting, applied, apply_setting, grid

__all__ = ["Choice", "Entry", "Option", "Setting", "applied", "apply_setting", "grid", "holdout", "knapsack",
           "profile", "uniform"]
