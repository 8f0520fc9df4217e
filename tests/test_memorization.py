"""Nearest neighbours equal a brute-force search; the memorization ratios on hand-built cases;
a nearest-image oracle's samples are all memorized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.diffusion import samplers as S
from probe.metrics import memorization as mem


def _brute(queries, reference, k, metric, mean_removed):
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    if mean_removed:
        q, r = q - q.mean(1, keepdims=True), r - r.mean(1, keepdims=True)
    if metric == "l2":
        d = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(d, order, 1)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = q @ r.T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, 1)


class LazyRows:
    """A reference read chunk by chunk (as a run's training images are)."""

    def __init__(self, array):
        self.array, self.reads = array, 0

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        self.reads += 1
        return self.array[key]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("mean_removed", [False, True])
def test_nearest_neighbours_equal_brute_force(metric, mean_removed):
    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, (700, 1, 6, 6)).astype(np.float32)
    queries = reference[rng.choice(700, 40)] + rng.normal(0, 0.3, (40, 1, 6, 6)).astype(
        np.float32)
    lazy = LazyRows(reference)
    idx, score = mem.nearest_neighbours(torch.from_numpy(queries), lazy, k=7, metric=metric,
                                        mean_removed=mean_removed, chunk=128)
    want_idx, want_score = _brute(queries, reference, 7, metric, mean_removed)
    assert lazy.reads > 700 // 128  # read in chunks, never whole
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    np.testing.assert_allclose(score.numpy(), want_score, rtol=1e-5, atol=1e-6)


def test_ties_go_to_the_lower_index_and_k_is_capped_by_the_reference():
    reference = np.zeros((6, 4), np.float32)
    reference[[1, 4]] = 1.0  # two identical rows, both nearest to the query
    reference[[0, 2, 3, 5]] = 5.0
    idx, dist = mem.nearest_neighbours(np.ones((1, 4), np.float32), reference, k=10,
                                       chunk=4)
    assert idx.shape == (1, 6)
    assert idx[0, :2].tolist() == [1, 4]
    assert dist[0, :2].tolist() == [0.0, 0.0]


def test_nn_ratio_memorized_fraction_and_carlini_on_points_of_a_line():
    reference = np.array([[0.0], [10.0], [20.0], [40.0]], np.float32)
    queries = np.array([[1.0], [5.0], [20.0]], np.float32)
    _, d = mem.nearest_neighbours(queries, reference, k=4)
    # distances: q=1 -> 1, 9, 19, 39; q=5 -> 5, 5, 15, 35; q=20 -> 0, 10, 20, 20
    np.testing.assert_allclose(mem.nn_ratio(d), [1 / 9, 1.0, 0.0])
    assert mem.memorized_fraction(d) == pytest.approx(2 / 3)
    np.testing.assert_allclose(mem.carlini_ratio(d, k=2), [1 / 5, 1.0, 0.0])
    np.testing.assert_allclose(mem.carlini_ratio(d, k=4), [4 / 68, 20 / 60, 0.0])


def test_pair_cosine_and_reproducible_fraction():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3, 4, 4))
    b = a.copy()
    b[0] *= 3.0  # same direction: cosine 1
    b[1] = -a[1]  # opposite: -1
    b[2] = a[2] + 7.0  # a constant shift: 1 again once each image's mean is removed
    cos = mem.pair_cosine(a, b)
    assert cos[0] == pytest.approx(1) and cos[1] == pytest.approx(-1)
    assert cos[2] < 0.9
    assert mem.pair_cosine(a, b, mean_removed=True)[2] == pytest.approx(1)
    assert mem.reproducible_fraction(cos, 0.9) == pytest.approx((cos > 0.9).mean())
    assert mem.reproducible_fraction([0.95, 0.85, 0.91], 0.9) == pytest.approx(2 / 3)


class NearestImage(torch.nn.Module):
    """An oracle memorizer: D(y) = the training image nearest to y."""

    objective, channels, image_size = "edm", 1, 6

    def __init__(self, train):
        super().__init__()
        self.train = train

    def forward(self, x, sigma, class_labels=None):
        d = torch.cdist(x.flatten(1), self.train.flatten(1))
        return self.train[d.argmin(1)]


def test_a_memorizing_denoiser_scores_memorized_fraction_one():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(20, 1, 6, 6, generator=g) * 2 - 1
    samples = S.sample_from_seeds(NearestImage(train), [(0, i) for i in range(32)], "ddim",
                                  sigmas=S.karras_sigmas(10, 0.01, 20.0))
    _, d = mem.nearest_neighbours(samples, train, k=mem.CARLINI_K)
    assert mem.memorized_fraction(d) == 1.0
    assert np.all(mem.carlini_ratio(d) < 0.01)
    # independent noise images are not memorized: their NN ratio is near 1
    _, d_noise = mem.nearest_neighbours(torch.rand(32, 1, 6, 6, generator=g) * 2 - 1, train,
                                        k=2)
    assert mem.memorized_fraction(d_noise) < 0.2
