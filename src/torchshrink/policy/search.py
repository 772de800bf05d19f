"""Choosing one setting per layer under a budget: an exact multiple-choice knapsack.

Each layer ``l`` offers options ``(cost_l,k, damage_l,k)``; the policy minimizes the
predicted damage ``Σ_l damage_l,k(l)`` subject to ``Σ_l cost_l,k(l) <= budget``. With
additive costs (file bytes, latency, energy: each layer's own) this is the
multiple-choice knapsack, solved exactly by dynamic programming over the cost in units
of ``budget / resolution`` (costs rounded *up*, so a chosen policy never exceeds the
budget by its prediction). The same table gives the whole predicted Pareto front
(best damage at every cost), which the report plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import RecipeError


@dataclass(frozen=True)
class Option:
    """One choice for one layer: its ``cost`` (in the budget's unit) and predicted ``damage``."""

    key: object
    cost: float
    damage: float


@dataclass(frozen=True)
class Choice:
    picks: dict[str, Option]
    cost: float
    damage: float


def knapsack(options: Mapping[str, Sequence[Option]], budget: float, resolution: int = 4000) -> tuple[Choice, list[tuple[float, float]]]:
    """The least-damage pick of one option per layer whose total cost fits ``budget``.

    Returns the choice and the predicted Pareto front ``[(cost, damage), ...]`` (cost in
    the budget's unit, at the DP's resolution). Raises :class:`RecipeError` when even the
    cheapest options exceed the budget (naming the smallest feasible budget).
    """
    if not options:
        raise RecipeError("the policy has no layers to choose settings for")
    if not (budget > 0 and math.isfinite(budget)):
        raise RecipeError(f"the budget must be a positive finite number. Got {budget!r}.")
    floor = sum(min(o.cost for o in opts) for opts in options.values())
    if floor > budget:
        raise RecipeError(f"the budget {budget:g} is below the cheapest policy's {floor:g}; "
                          f"raise the budget or add cheaper settings to the grid")
    unit = budget / resolution
    names = list(options)
    inf = math.inf
    best = np.full(resolution + 1, inf)
    best[0] = 0.0
    back: list[np.ndarray] = []
    for name in names:
        new = np.full(resolution + 1, inf)
        arg = np.full(resolution + 1, -1, dtype=np.int64)
        for k, opt in enumerate(options[name]):
            c = int(math.ceil(opt.cost / unit - 1e-9))
            if c > resolution:
                continue
            cand = np.full(resolution + 1, inf)
            cand[c:] = best[: resolution + 1 - c] + opt.damage
            better = cand < new
            new[better], arg[better] = cand[better], k
        best = new
        back.append(arg)
    # best[c] = least damage at total (rounded) cost exactly c
    end = int(np.argmin(best))
    if not math.isfinite(best[end]):
        raise RecipeError(f"no policy fits the budget {budget:g} at this resolution; raise the budget")
    picks: dict[str, Option] = {}
    c = end
    for name, arg in zip(reversed(names), reversed(back)):
        opt = options[name][int(arg[c])]
        picks[name] = opt
        c -= int(math.ceil(opt.cost / unit - 1e-9))
    picks = {n: picks[n] for n in names}
    front, running = [], inf
    for c in range(resolution + 1):
        if best[c] < running - 1e-12:
            running = float(best[c])
            front.append((c * unit, running))
    return Choice(picks, sum(o.cost for o in picks.values()), sum(o.damage for o in picks.values())), front


def uniform(options: Mapping[str, Sequence[Option]], budget: float) -> Choice:
    """The least-damage choice that gives every layer the same setting key and fits ``budget``."""
    keys = set.intersection(*({o.key for o in opts} for opts in options.values()))
    best = None
    for key in keys:
        picks = {n: next(o for o in opts if o.key == key) for n, opts in options.items()}
        cost, damage = sum(o.cost for o in picks.values()), sum(o.damage for o in picks.values())
        if cost <= budget and (best is None or damage < best.damage):
            best = Choice(picks, cost, damage)
    if best is None:
        raise RecipeError(f"no uniform setting fits the budget {budget:g}")
    return best
