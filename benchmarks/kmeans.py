"""Benchmark: torchshrink's 1-D k-means vs scikit-learn's KMeans from the same start.

Both run Lloyd from the same linear initialization (Deep Compression §3.1) with
``max_iter=100, tol=1e-6`` on seeded normal float32 weights, in the same process. Both
inertias are recomputed in float64 from each solver's centroids and labels, so they are
comparable; ``inertia_ok`` means ours <= scikit-learn's x 1.0001. Times are the best of
``--repeat`` runs after a warm-up call of each solver (wall clock; scikit-learn uses
every core through OpenMP, torchshrink one).

    python benchmarks/kmeans.py            # n = 1M and 4M, k = 16 and 32
    python benchmarks/kmeans.py --quick    # n = 100k smoke run
    python benchmarks/kmeans.py --json     # a JSON list instead of the table
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.cluster import KMeans

from torchshrink.quantize.kmeans1d import kmeans1d, kmeans1d_init

MAX_ITER = 100
TOL = 1e-6


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Smallest wall time over ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def inertia64(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    residual = x.astype(np.float64) - np.asarray(centroids, dtype=np.float64).ravel()[labels]
    return float(np.dot(residual, residual))


def run_case(n: int, k: int, repeat: int, seed: int = 0) -> dict[str, Any]:
    x = (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(np.float32)
    start = kmeans1d_init(x, k, init="linear")

    def sklearn_fit() -> KMeans:
        model = KMeans(n_clusters=k, init=start.reshape(-1, 1), n_init=1, max_iter=MAX_ITER, tol=TOL)
        return model.fit(x.reshape(-1, 1))

    def ours() -> tuple:
        return kmeans1d(x, k, init="linear", max_iter=MAX_ITER, tol=TOL, return_n_iter=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when max_iter is reached
        sk_s, model = best_time(sklearn_fit, repeat)
    ts_s, (centroids, labels, _, ts_iter) = best_time(ours, repeat)
    sk_inertia = inertia64(x, model.cluster_centers_, model.labels_)
    ts_inertia = inertia64(x, centroids, labels)
    return {
        "n": n,
        "k": k,
        "sklearn_s": round(sk_s, 4),
        "torchshrink_s": round(ts_s, 4),
        "speedup": round(sk_s / ts_s, 2),
        "sklearn_inertia": sk_inertia,
        "torchshrink_inertia": ts_inertia,
        "inertia_ok": ts_inertia <= sk_inertia * 1.0001,
        "sklearn_iter": int(model.n_iter_),
        "torchshrink_iter": int(ts_iter),
    }


def warm_up() -> None:
    """Pay one-time costs (numba kernels, OpenMP thread pools) before any timing."""
    x = np.random.default_rng(1).standard_normal(2000).astype(np.float32)
    kmeans1d(x, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        KMeans(n_clusters=4, init=kmeans1d_init(x, 4).reshape(-1, 1), n_init=1).fit(x.reshape(-1, 1))


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'n':>9} {'k':>3} {'sklearn_s':>10} {'torchshrink_s':>14} {'speedup':>8} "
              f"{'sklearn_inertia':>16} {'torchshrink_inertia':>20} {'inertia_ok':>10} {'iters sk/ts':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['n']:>9} {r['k']:>3} {r['sklearn_s']:>10.3f} {r['torchshrink_s']:>14.3f} {r['speedup']:>7.1f}x "
              f"{r['sklearn_inertia']:>16.6f} {r['torchshrink_inertia']:>20.6f} {str(r['inertia_ok']):>10} "
              f"{r['sklearn_iter']:>5}/{r['torchshrink_iter']:<6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one smoke size, n = 100k")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs per solver")
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [1_000_000, 4_000_000]
    warm_up()
    rows = [run_case(n, k, max(1, args.repeat)) for n in sizes for k in (16, 32)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
