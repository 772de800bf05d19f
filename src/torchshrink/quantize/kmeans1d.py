"""Exact Lloyd k-means on scalars, for weight sharing (Han et al. 2016, Deep Compression §3.1).

In one dimension the clusters of Lloyd's algorithm are contiguous runs of the sorted
data, bounded by the midpoints of consecutive sorted centroids. So the data is sorted
once (O(n log n)); each iteration then finds the cluster boundaries with
``np.searchsorted`` on the sorted data (O(k log n)) and the new means from prefix sums
(O(k)). The iterations are scikit-learn's Lloyd (same assignment, stopping rule and
relocation of empty clusters, up to floating-point ties), so from the same initial
centroids both reach the same local optimum; the final labels cost O(n log k) (numba).

Initializations (Deep Compression Fig. 4 compares the three; linear is the paper's
choice because it keeps the rare large weights):

* ``"linear"``: k points evenly spaced over ``[min, max]``;
* ``"density"``: the quantiles ``(2i + 1) / 2k`` of the empirical CDF (equal-mass bins);
* ``"random"`` (Forgy): k distinct observations drawn with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..core.params import Interval, check
from ..errors import ModelError

MAX_K = 1 << 16
INITS = ("linear", "density", "random")


def _check_int(value: Any, name: str, low: int, high: int) -> int:
    return check(value, name, "kmeans1d", Interval(int, low, high))


def _sorted_data(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and sort ``x``; raise :class:`ModelError` on empty, non-real or non-finite input."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ModelError(f"kmeans1d needs a real-valued array. Got dtype {arr.dtype}.")
    if arr.size == 0:
        raise ModelError("kmeans1d needs at least one value. Got an empty array.")
    flat = arr.ravel()
    xs = np.sort(flat)  # NaN sorts last, -inf first, +inf just before NaN
    if arr.dtype.kind == "f" and not (np.isfinite(xs[0]) and np.isfinite(xs[-1])):
        n_nan, n_inf = int(np.isnan(flat).sum()), int(np.isinf(flat).sum())
        raise ModelError(
            f"kmeans1d got {n_nan} NaN and {n_inf} infinite values; remove or replace them before clustering."
        )
    return flat, xs


def _initial_centroids(xs: np.ndarray, k: int, init: Any, seed: int) -> np.ndarray:
    """Sorted float64 starting centroids from sorted data ``xs`` (see the module docstring)."""
    n = xs.size
    if isinstance(init, str):
        if init == "linear":
            return np.linspace(float(xs[0]), float(xs[-1]), k)
        if init == "density":
            return xs[np.minimum((np.arange(k) * 2 + 1) * n // (2 * k), n - 1)].astype(np.float64)
        if init == "random":
            seed = _check_int(seed, "seed", 0, 2**63 - 1)
            picks = np.random.default_rng(seed).choice(n, size=min(k, n), replace=False)
            return np.sort(xs[picks].astype(np.float64))
        raise ModelError(f"The 'init' parameter of kmeans1d must be one of {list(INITS)} or an array. Got {init!r}.")
    centroids = np.asarray(init, dtype=np.float64).ravel()
    if centroids.size != k or not np.isfinite(centroids).all():
        raise ModelError(f"An explicit 'init' must hold {k} finite centroids. Got {centroids.size} values.")
    return np.sort(centroids)


def kmeans1d_init(x: Any, k: int, init: str = "linear", seed: int = 0) -> np.ndarray:
    """The sorted float64 starting centroids :func:`kmeans1d` would use (to seed other solvers)."""
    k = _check_int(k, "k", 1, MAX_K)
    _, xs = _sorted_data(x)
    return _initial_centroids(xs, k, init, seed)


def _assign(x, centroids, mids, out):
    """Label each value with its nearest centroid (binary search over the midpoints);
    return the float64 inertia. Compiled with numba on first use."""
    total = 0.0
    for i in range(x.size):
        value = np.float64(x[i])
        lo = 0
        n = mids.size
        while n > 0:  # lo = number of midpoints strictly below value
            half = n >> 1
            if mids[lo + half] < value:
                lo = lo + half + 1
                n = n - half - 1
            else:
                n = half
        out[i] = lo
        d = value - centroids[lo]
        total += d * d
    return total


@functools.cache
def _assign_kernel():
    import numba

    return numba.njit(cache=True, nogil=True)(_assign)


def _labels_and_inertia(flat: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest-centroid labels (ties go to the lower centroid) and the inertia, O(n log k)."""
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)
    labels = np.empty(flat.size, dtype=np.int64)
    inertia = _assign_kernel()(flat, centroids, (centroids[:-1] + centroids[1:]) / 2, labels)
    return labels, float(inertia)


def _relocate_empty(xc, edges, counts, sums, old, empty):
    """Move each empty centroid onto one of the points farthest from their centroid.

    The farthest points of a cluster lie at its two ends, so only the ``e`` outermost
    points of each cluster are candidates (``e`` = number of empty clusters). As in
    scikit-learn, a moved point also leaves its old cluster's sum and count.
    Returns the new positions of the empty centroids (or their old ones if every point
    already sits on its centroid).
    """
    e = empty.size
    owners = np.flatnonzero(counts)
    starts, stops = edges[owners], edges[owners + 1]
    offsets = np.arange(e)
    left = np.minimum(starts[:, None] + offsets, stops[:, None] - 1)
    right = np.maximum(stops[:, None] - 1 - offsets, starts[:, None])
    idx = np.concatenate([left, right], axis=1)
    owner = np.broadcast_to(owners[:, None], idx.shape)
    idx, first = np.unique(idx.ravel(), return_index=True)
    owner = owner.ravel()[first]
    dist = np.abs(xc[idx] - old[owner])
    best = np.lexsort((idx, -dist))[:e]
    best = best[dist[best] > 0]
    moved = old[empty].copy()
    for slot, pick in enumerate(best):
        moved[slot] = xc[idx[pick]]
        sums[owner[pick]] -= xc[idx[pick]]
        counts[owner[pick]] -= 1
    return moved


def kmeans1d(
    x: Any,
    k: int,
    init: Any = "linear",
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    return_n_iter: bool = False,
) -> tuple[np.ndarray, np.ndarray, float] | tuple[np.ndarray, np.ndarray, float, int]:
    """Cluster the values of ``x`` (any shape) into ``k`` groups with Lloyd's algorithm.

    Args:
        x: real array of any shape; NaN or infinite values raise :class:`ModelError`.
        k: number of clusters, an int in ``[1, 65536]``.
        init: ``"linear"`` (Deep Compression's choice), ``"density"``, ``"random"``, or
            an array of ``k`` starting centroids.
        max_iter: at most this many Lloyd iterations (``0`` keeps the initial centroids).
        tol: stop when the summed squared centroid shift is at most ``tol * var(x)``
            (scikit-learn's rule); a partition that stops changing also stops.
        seed: seed of the ``"random"`` initialization.
        return_n_iter: also return the number of iterations run.

    Returns:
        ``(centroids, labels, inertia)``: sorted float64 centroids, int64 labels of
        ``x``'s shape mapping each value to its nearest centroid (a value exactly halfway
        goes to the lower one), and the float64 sum of squared distances. If ``x`` has at
        most ``k`` distinct values, the centroids are those values (fewer than ``k``
        possibly) and the inertia is 0.
    """
    k = _check_int(k, "k", 1, MAX_K)
    max_iter = _check_int(max_iter, "max_iter", 0, 1 << 31)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not 0 <= tol < np.inf:
        raise ModelError(f"The 'tol' parameter of kmeans1d must be a finite float >= 0. Got {tol!r}.")
    flat, xs = _sorted_data(x)
    n = xs.size
    distinct = np.empty(n, dtype=bool)
    distinct[0] = True
    np.not_equal(xs[1:], xs[:-1], out=distinct[1:])
    if np.count_nonzero(distinct) <= k:
        centroids = xs[distinct].astype(np.float64)
        labels, inertia = _labels_and_inertia(flat, centroids)
        labels = labels.reshape(np.shape(x))
        return (centroids, labels, inertia, 0) if return_n_iter else (centroids, labels, inertia)

    shift = float(xs[n // 2])
    xc = np.subtract(xs, shift, dtype=np.float64)  # centred: accurate prefix sums
    prefix = np.zeros(n + 1)
    np.cumsum(xc, out=prefix[1:])
    tol_abs = tol * float(np.dot(xc, xc) / n - (prefix[-1] / n) ** 2)
    c = _initial_centroids(xs, k, init, seed) - shift
    previous, relocated, n_iter = None, False, 0
    for n_iter in range(1, max_iter + 1):
        bounds = np.searchsorted(xc, (c[:-1] + c[1:]) / 2, side="right")
        if previous is not None and not relocated and np.array_equal(bounds, previous):
            break  # the partition is stable: c already holds its means
        edges = np.concatenate(([0], bounds, [n]))
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = c.copy()
        empty = np.flatnonzero(counts == 0)
        relocated = empty.size > 0
        if relocated:
            new[empty] = _relocate_empty(xc, edges, counts, sums, c, empty)
        full = counts > 0
        new[full] = sums[full] / counts[full]
        shift_sq = float(np.sum((new - c) ** 2))
        c, previous = np.sort(new), bounds
        if shift_sq <= tol_abs:
            break

    centroids = c + shift
    labels, inertia = _labels_and_inertia(flat, centroids)
    labels = labels.reshape(np.shape(x))
    return (centroids, labels, inertia, n_iter) if return_n_iter else (centroids, labels, inertia)
