"""1-D k-means: agreement with a naive Lloyd, monotone inertia, nearest labels, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from torchshrink.errors import ModelError
from torchshrink.quantize.kmeans1d import kmeans1d, kmeans1d_init


def reference_lloyd(x: np.ndarray, init: np.ndarray, max_iter: int, tol: float):
    """Plain Lloyd with an n x k distance matrix and scikit-learn's rules.

    Empty clusters take the points farthest from their centroids (which then leave their
    old cluster); stop when the summed squared shift is at most tol * var(x).
    """
    x = x.astype(np.float64).ravel()
    c = np.sort(np.asarray(init, dtype=np.float64))
    k = c.size
    for _ in range(max_iter):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.bincount(labels, weights=x, minlength=k)
        new = c.copy()
        empty = np.flatnonzero(counts == 0)
        far = np.argsort(-((x - c[labels]) ** 2), kind="stable")[: empty.size]
        for slot, point in zip(empty, far):
            new[slot] = x[point]
            sums[labels[point]] -= x[point]
            counts[labels[point]] -= 1
        full = counts > 0
        new[full] = sums[full] / counts[full]
        shift = np.sum((new - c) ** 2)
        c = np.sort(new)
        if shift <= tol * x.var():
            break
    labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
    return c, labels, float(np.sum((x - c[labels]) ** 2))


def normal_weights(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("k", [2, 3, 8, 17])
def test_matches_naive_lloyd(init, k):
    x = normal_weights(600, seed=k)
    start = kmeans1d_init(x, k, init=init, seed=3)
    centroids, labels, inertia = kmeans1d(x, k, init=init, seed=3, max_iter=50)
    ref_c, ref_labels, ref_inertia = reference_lloyd(x, start, max_iter=50, tol=1e-6)
    np.testing.assert_allclose(centroids, ref_c, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(labels, ref_labels)
    assert inertia == pytest.approx(ref_inertia, rel=1e-9)


def test_matches_naive_lloyd_with_empty_clusters():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(-10, 0.5, 200), rng.normal(10, 0.5, 200)])
    start = kmeans1d_init(x, 6)  # the four middle centroids start with no points
    centroids, labels, inertia = kmeans1d(x, 6, max_iter=30)
    ref_c, ref_labels, ref_inertia = reference_lloyd(x, start, max_iter=30, tol=1e-6)
    np.testing.assert_allclose(centroids, ref_c, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(labels, ref_labels)
    assert inertia == pytest.approx(ref_inertia, rel=1e-9)
    assert np.unique(labels).size == 6


def test_explicit_init_array_is_used():
    x = normal_weights(300)
    start = np.array([1.0, -1.0, 0.0])
    centroids, _, _ = kmeans1d(x, 3, init=start, max_iter=0)
    np.testing.assert_array_equal(centroids, [-1.0, 0.0, 1.0])


@pytest.mark.parametrize("init", ["linear", "random"])
def test_inertia_never_increases_with_iterations(init):
    x = np.concatenate([normal_weights(500), 4 + normal_weights(100, seed=1)])
    inertias = [kmeans1d(x, 12, init=init, max_iter=t)[2] for t in range(0, 25)]
    assert np.all(np.diff(inertias) <= 1e-9 * inertias[0])
    assert inertias[-1] < inertias[0]


def test_labels_map_to_the_nearest_centroid():
    x = normal_weights(5000).reshape(50, 100)
    centroids, labels, inertia = kmeans1d(x, 32)
    assert labels.shape == x.shape
    dist = np.abs(x.astype(np.float64)[..., None] - centroids)
    assert np.all(dist[np.arange(50)[:, None], np.arange(100), labels] <= dist.min(axis=-1) + 1e-12)
    assert inertia == pytest.approx(float(np.sum((x - centroids[labels]) ** 2)), rel=1e-9)


def test_centroids_are_sorted_means_of_their_clusters():
    x = normal_weights(2000)
    centroids, labels, _ = kmeans1d(x, 16, tol=0.0)
    assert np.all(np.diff(centroids) > 0)
    means = np.bincount(labels, weights=x, minlength=16) / np.bincount(labels, minlength=16)
    np.testing.assert_allclose(centroids, means, rtol=0, atol=1e-9)


def test_linear_and_density_initializations():
    x = normal_weights(1000)
    np.testing.assert_allclose(kmeans1d_init(x, 5, "linear"), np.linspace(x.min(), x.max(), 5))
    xs = np.sort(x)
    np.testing.assert_array_equal(kmeans1d_init(x, 4, "density"), xs[[125, 375, 625, 875]])


def test_random_initialization_is_seeded():
    x = normal_weights(1000)
    np.testing.assert_array_equal(kmeans1d_init(x, 8, "random", seed=1), kmeans1d_init(x, 8, "random", seed=1))
    assert not np.array_equal(kmeans1d_init(x, 8, "random", seed=1), kmeans1d_init(x, 8, "random", seed=2))


def test_single_cluster_is_the_mean():
    x = normal_weights(100).astype(np.float64)
    centroids, labels, inertia = kmeans1d(x, 1)
    np.testing.assert_allclose(centroids, [x.mean()], rtol=0, atol=1e-12)
    assert not labels.any()
    assert inertia == pytest.approx(float(np.sum((x - x.mean()) ** 2)), rel=1e-12)


def test_constant_input():
    centroids, labels, inertia = kmeans1d(np.full((4, 5), 0.25, dtype=np.float32), 8)
    np.testing.assert_array_equal(centroids, [0.25])
    np.testing.assert_array_equal(labels, np.zeros((4, 5)))
    assert inertia == 0.0


def test_k_at_least_the_number_of_distinct_values():
    x = np.array([3.0, -1.0, 3.0, 0.5, -1.0])
    centroids, labels, inertia = kmeans1d(x, 3)
    np.testing.assert_array_equal(centroids, [-1.0, 0.5, 3.0])
    np.testing.assert_array_equal(labels, [2, 0, 2, 1, 0])
    assert inertia == 0.0


def test_not_worse_than_scikit_learn_from_the_same_start():
    from sklearn.cluster import KMeans

    x = normal_weights(20000)
    start = kmeans1d_init(x, 16)
    km = KMeans(16, init=start[:, None], n_init=1, max_iter=100, tol=1e-6).fit(x[:, None].astype(np.float64))
    sk_inertia = float(np.sum((x - km.cluster_centers_.ravel()[km.labels_]) ** 2))
    assert kmeans1d(x, 16)[2] <= sk_inertia * (1 + 1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_input(bad):
    x = normal_weights(10)
    x[3] = bad
    with pytest.raises(ModelError, match="NaN|infinite"):
        kmeans1d(x, 2)


@pytest.mark.parametrize("k", [0, 65537, 2.0, True])
def test_rejects_k_out_of_range(k):
    with pytest.raises(ModelError, match="'k' parameter"):
        kmeans1d(normal_weights(10), k)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"init": "kmeans++"}, "'init'"), ({"init": [0.0, 1.0]}, "3 finite"), ({"max_iter": -1}, "'max_iter'"),
     ({"tol": -1.0}, "'tol'")],
)
def test_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ModelError, match=message):
        kmeans1d(normal_weights(10), 3, **kwargs)


@pytest.mark.parametrize(("x", "message"), [(np.zeros(0), "at least one value"),
                                             (np.array(["a", "b"]), "real-valued array"),
                                             (np.array([1 + 2j]), "real-valued array")])
def test_rejects_empty_or_non_real_input(x, message):
    with pytest.raises(ModelError, match=message):
        kmeans1d(x, 2)
