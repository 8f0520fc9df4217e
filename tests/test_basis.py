"""GAHB metrics against known answers: Fourier vectors, designed subspaces, power laws."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from probe.metrics import basis


def fourier(size: int, u: int, v: int, channels: int = 1) -> np.ndarray:
    """cos(2 pi (u x + v y) / size) as a [C, H, W] vector: radial frequency hypot(u, v) / size."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    wave = np.cos(2 * np.pi * (u * xx + v * yy) / size)
    return np.repeat(wave[None], channels, axis=0)


FREQS = [(0, 1), (1, 1), (2, 0), (2, 2), (3, 3), (0, 5), (4, 4), (7, 0)]


@pytest.mark.parametrize("channels", [1, 3])
def test_dominant_frequency_of_fourier_vectors_is_their_radial_frequency(channels):
    size = 16
    vectors = np.stack([fourier(size, u, v, channels) for u, v in FREQS])
    expected = [np.hypot(u, v) / size for u, v in FREQS]
    np.testing.assert_allclose(basis.dominant_frequency(vectors), expected, atol=1e-12)
    assert basis.dominant_frequency(np.ones((1, channels, size, size)))[0] == 0  # a constant


def test_harmonicity_is_spearman_of_rank_and_frequency():
    size = 16
    ordered = np.stack([fourier(size, u, v) for u, v in FREQS])  # increasing frequency
    assert basis.harmonicity(ordered) == pytest.approx(1)
    assert basis.harmonicity(ordered[::-1]) == pytest.approx(-1)
    perm = np.random.default_rng(0).permutation(len(FREQS))
    expected = scipy.stats.spearmanr(np.arange(len(perm)), perm).statistic
    assert basis.harmonicity(ordered[perm]) == pytest.approx(expected)
    # localised (pixel) vectors all have the same flat spectrum: no ordering, no number
    deltas = np.eye(size * size)[:5].reshape(5, 1, size, size)
    assert np.isnan(basis.harmonicity(deltas))


def test_subspace_agreement_of_designed_subspaces():
    d = 10
    e = np.eye(d)
    for theta in (0.0, 0.3, 1.0, np.pi / 2):
        a = e[:, :2]
        b = np.stack([e[:, 0], np.cos(theta) * e[:, 1] + np.sin(theta) * e[:, 2]], axis=1)
        assert basis.subspace_agreement(a, b) == pytest.approx((1 + np.cos(theta)) / 2)
    # the span matters, not the basis chosen in it
    q = np.linalg.qr(np.random.default_rng(1).standard_normal((d, 3)))[0]
    mix = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))[0]
    assert basis.subspace_agreement(q, q @ mix) == pytest.approx(1)


def test_shrinkage_profile():
    values = np.array([1.0, 0.9, 0.7, 0.5, 0.49, 0.2])
    assert basis.threshold_index(values) == 4  # 0.5 itself is not below one half
    assert np.isnan(basis.threshold_index(np.array([0.9, 0.8])))
    for alpha in (0.5, 1.0, 2.5):
        assert basis.decay_exponent(3.0 * np.arange(1, 65) ** -alpha) == pytest.approx(alpha)
    signs = np.where(np.arange(64) % 2, -1, 1)  # |.| decays even when the signs alternate
    assert basis.decay_exponent(signs * np.arange(1, 65) ** -1.5) == pytest.approx(1.5)


def test_memorization_signature():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((50, 20))
    vectors = np.linalg.qr(rng.standard_normal((20, 3)))[0]
    vectors[:, 1] = -images[17] / np.linalg.norm(images[17])  # a training image, sign-flipped
    chunks = [images[:20], images[20:]]
    assert basis.memorization_signature(vectors, chunks) == pytest.approx(1)
    generic = rng.standard_normal((20, 1))
    values = np.abs(images @ generic[:, 0]) / np.linalg.norm(images, axis=1) / np.linalg.norm(
        generic)
    assert basis.memorization_signature(generic, chunks) == pytest.approx(values.max())
    assert basis.memorization_signature(generic, chunks) < 1
    mean = images.mean(0)
    centred = (images - mean) / np.linalg.norm(images - mean, axis=1, keepdims=True)
    assert basis.memorization_signature(vectors, chunks, mean) == pytest.approx(
        np.abs(centred @ vectors).max())


def test_group_metrics_on_a_harmonic_basis():
    """A group whose eigenvectors are Fourier vectors ordered coarse to fine: harmonicity 1,
    and the clean image's coefficients / energy follow from its construction."""
    size = 8
    freqs = [(0, 1), (1, 1), (2, 0), (2, 2), (3, 3)]
    vecs = np.stack([fourier(size, u, v).ravel() for u, v in freqs], axis=1)
    vecs /= np.linalg.norm(vecs, axis=0)
    clean = (vecs @ (2.0 ** -np.arange(5))).reshape(1, size, size)  # coefficients 1, 1/2, ...
    evals = np.linspace(1, 0, size * size)
    group = {"clean": clean, "eigenvectors": vecs, "eigenvalues": evals,
             "left_singular_vectors": vecs[:, ::-1], "trace": 3.0, "asymmetry": 0.1,
             "linearity": 0.2}
    m = basis.group_metrics(group)
    assert m["harmonicity_eigen"] == pytest.approx(1)
    assert m["harmonicity_singular"] == pytest.approx(-1)
    assert m["clean_energy_topk"] == pytest.approx(1)
    assert m["projection_decay"] == pytest.approx(basis.decay_exponent(2.0 ** -np.arange(5)))
    assert m["eigen_below_half"] == np.argmax(evals < 0.5)
    assert (m["trace"], m["asymmetry"], m["linearity"]) == (3.0, 0.1, 0.2)


def test_eigenvector_grid_views_of_a_colour_model():
    from probe.report.jacobian_figures import eigenvector_grid

    rng = np.random.default_rng(4)
    rows = [{"label": f"run {i}", "vectors": rng.standard_normal((3, 3, 4, 4)),
             "eigenvalues": np.array([0.9, 0.5, 0.1])} for i in range(2)]
    axes = eigenvector_grid(rows)
    assert axes.shape == (2, 3)
    shown = axes[1, 2].get_images()[0].get_array()
    vec = rows[1]["vectors"][2]  # RGB around mid-grey, scaled by the largest |entry|
    np.testing.assert_allclose(shown, 0.5 + 0.5 * vec.transpose(1, 2, 0) / np.abs(vec).max())
    split = eigenvector_grid(rows, split_channels=True)
    assert split.shape == (2, 9)  # every eigenvector as its R, G, B planes
    np.testing.assert_allclose(split[0, 4].get_images()[0].get_array(), rows[0]["vectors"][1][1])
    assert split[0, 3].get_title() == "0.5"


def test_runs_pair_automatically_by_data_n_split_and_arch():
    from types import SimpleNamespace as NS

    def run(name, arch="dit-tiny/2", n=10, split="a", data="h1", windows=()):
        return NS(run_id=name, arch=arch, n=n, split=split, data_sha256=data,
                  objective="ddpm", windows=windows)

    runs = [run("dit-a"), run("dit-b", split="b"), run("unet-a", arch="unet-xs"),
            run("dit-a-100", n=100), run("dit-b-other-data", split="b", data="h2"),
            run("dit-b-windowed", split="b", windows=("0-3:3",))]
    found = {(metric, a.run_id, b.run_id) for metric, a, b in basis.pairs(runs)}
    assert found == {("agreement_split", "dit-a", "dit-b"),
                     ("agreement_arch", "dit-a", "unet-a")}
