"""Analytic denoisers (probe.baselines): every check has a closed-form answer.

ideal: nearest training image at small sigma, the two-point posterior mean, streaming blocks
and disk chunks equal to one dense softmax; wiener: the exact MMSE estimator of a known
Gaussian, a constant Jacobian C (C + s^2 I)^-1, the stationary variant equal to the full one on
a shift-closed set; ls/els: translation equivariance on periodic boundaries, reduction to the
(shift-augmented) ideal denoiser with a whole-image patch, the zero-padding boundary groups
against a per-pixel reference; bad patches and sets too large for memory as one line.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from probe.baselines import streaming
from probe.baselines.base import TrainingImages
from probe.baselines.ideal import IdealDenoiser
from probe.baselines.local import LocalScoreDenoiser, PatchSchedule, check_patch
from probe.baselines.run import check_memory
from probe.baselines.wiener import StationaryWiener, WienerDenoiser
from probe.errors import ProbeError

F64 = torch.float64


def _images(n, size=5, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g, dtype=F64) * 2 - 1


def _dense_ideal(train, x, s):
    d2 = torch.cdist(x.flatten(1), train.flatten(1)) ** 2
    return (torch.softmax(-d2 / (2 * s * s), 1) @ train.flatten(1)).reshape(x.shape)


# ----------------------------------------------------------------------------------- ideal


def test_ideal_returns_the_nearest_training_image_at_small_sigma():
    train = _images(20)
    x = train[[3, 11]] + 0.05 * torch.randn(2, 1, 5, 5, dtype=F64)
    out = IdealDenoiser(train, F64)(x, 0.01)
    assert torch.allclose(out, train[[3, 11]], atol=1e-12)


def test_ideal_on_two_images_is_the_two_point_posterior_mean():
    train = _images(2, seed=1)
    x = torch.randn(6, 1, 5, 5, dtype=F64) * 0.8
    for s in (0.3, 1.0, 3.0):
        # p(x_1 | x) = sigmoid((||x - x_2||^2 - ||x - x_1||^2) / (2 s^2))
        d1 = (x - train[0]).flatten(1).pow(2).sum(1)
        d2 = (x - train[1]).flatten(1).pow(2).sum(1)
        p1 = torch.sigmoid((d2 - d1) / (2 * s * s)).reshape(-1, 1, 1, 1)
        expected = p1 * train[0] + (1 - p1) * train[1]
        assert torch.allclose(IdealDenoiser(train, F64)(x, s), expected, atol=1e-12)


def test_ideal_streams_blocks_and_disk_chunks_exactly(monkeypatch):
    train = _images(300, size=6, seed=2)
    x = torch.randn(7, 1, 6, 6, dtype=F64)
    sigma = torch.tensor([0.2, 0.5, 1.0, 2.0, 0.3, 0.7, 5.0], dtype=F64)
    expected = torch.stack([_dense_ideal(train, x[i: i + 1], float(s))[0]
                            for i, s in enumerate(sigma)])
    monkeypatch.setattr("probe.baselines.ideal.block_rows", lambda q: 32)  # ten blocks
    assert torch.allclose(IdealDenoiser(train, F64)(x, sigma), expected, atol=1e-10)
    reads = []

    def read(lo, hi):
        reads.append((lo, hi))
        return train[lo:hi]

    chunked = TrainingImages(read=read, count=300, shape=(1, 6, 6), chunk=50)
    assert torch.allclose(IdealDenoiser(chunked, F64)(x, sigma), expected, atol=1e-10)
    assert max(hi - lo for lo, hi in reads) <= 50


def test_online_softmax_matches_the_dense_one():
    g = torch.Generator().manual_seed(3)
    logits, values = torch.randn(4, 100, generator=g, dtype=F64) * 30, \
        torch.randn(100, 3, generator=g, dtype=F64)
    acc = streaming.OnlineSoftmax()
    for lo in range(0, 100, 17):
        acc.add(logits[:, lo: lo + 17], values[lo: lo + 17])
    assert torch.allclose(acc.result(), torch.softmax(logits, 1) @ values, atol=1e-12)


# ---------------------------------------------------------------------------------- wiener


def _gaussian(d=16, seed=4):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    return torch.randn(d, generator=g, dtype=F64) * 0.1, a @ a.T + 0.01 * torch.eye(d, dtype=F64)


def test_wiener_is_the_exact_mmse_estimator_of_a_known_gaussian():
    mu, cov = _gaussian()
    shape = (1, 4, 4)
    w = WienerDenoiser.from_moments(mu, cov, shape).double()
    x = torch.randn(5, *shape, dtype=F64)
    for s in (0.1, 0.7, 2.0):
        exact = mu + (cov @ torch.linalg.solve(cov + s * s * torch.eye(16, dtype=F64),
                                               (x.flatten(1) - mu).T)).T
        assert torch.allclose(w(x, s).flatten(1), exact, atol=1e-5)
    # fitted on many draws from that Gaussian, it approaches the same estimator
    g = torch.Generator().manual_seed(5)
    draws = mu + torch.randn(40000, 16, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    fitted = WienerDenoiser.from_images(draws.reshape(-1, *shape)).double()
    assert (fitted(x, 0.5) - w(x, 0.5)).abs().max() < 0.05


def test_wiener_jacobian_is_constant_and_its_eigenvalues_are_the_shrinkage():
    train = _images(40, size=4, seed=6)
    w = WienerDenoiser.from_images(train).double()
    s = 0.4
    f = lambda v: w(v.reshape(1, 1, 4, 4), s).reshape(-1)  # noqa: E731
    jac = torch.func.jacrev(f)(torch.randn(16, dtype=F64))
    assert torch.allclose(jac, torch.func.jacrev(f)(torch.randn(16, dtype=F64)), atol=1e-10)
    x = train.flatten(1)
    cov = (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)
    expected = cov @ torch.linalg.inv(cov + s * s * torch.eye(16, dtype=F64))
    assert torch.allclose(jac, expected, atol=1e-5)
    ev = torch.linalg.eigvalsh(cov).flip(0)
    assert torch.allclose(torch.linalg.eigvalsh((jac + jac.T) / 2).flip(0), ev / (ev + s * s),
                          atol=1e-5)


def test_stationary_wiener_equals_the_full_one_on_a_shift_closed_set():
    base = _images(3, size=4, seed=7)
    closed = torch.cat([torch.roll(base, (a, b), (2, 3)) for a in range(4) for b in range(4)])
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    full = WienerDenoiser.from_images(closed).double()
    stationary = StationaryWiener.from_images(closed).double()
    for s in (0.2, 1.0):
        assert torch.allclose(full(x, s), stationary(x, s), atol=1e-5)
    shifted = stationary(torch.roll(x, (1, 3), (2, 3)), 0.5)
    assert torch.allclose(shifted, torch.roll(stationary(x, 0.5), (1, 3), (2, 3)), atol=1e-6)


# ---------------------------------------------------------------------------------- ls/els


def test_els_is_translation_equivariant_on_periodic_boundaries():
    train, x = _images(6, size=7, seed=8), torch.randn(2, 1, 7, 7, dtype=F64)
    els = LocalScoreDenoiser(train, 3, equivariant=True, boundary="periodic")
    for shift in ((1, 0), (2, 5), (6, 6)):
        assert torch.allclose(els(torch.roll(x, shift, (2, 3)), 0.6),
                              torch.roll(els(x, 0.6), shift, (2, 3)), atol=1e-12)


def test_whole_image_patches_reduce_to_the_ideal_denoiser():
    train, x = _images(5, size=5, seed=9), torch.randn(3, 1, 5, 5, dtype=F64)
    shifts = torch.cat([torch.roll(train, (a, b), (2, 3)) for a in range(5) for b in range(5)])
    for s in (0.3, 1.0):
        ls = LocalScoreDenoiser(train, 5, equivariant=False, boundary="periodic")
        els = LocalScoreDenoiser(train, 5, equivariant=True, boundary="periodic")
        assert torch.allclose(ls(x, s), _dense_ideal(train, x, s), atol=1e-12)
        assert torch.allclose(els(x, s), _dense_ideal(shifts, x, s), atol=1e-12)


def _reference_local(train, x, s, patch, equivariant):
    """Pixel by pixel with zero padding: candidates at the same location (ls) or at every
    location with the same border overlap (els)."""
    r, size = (patch - 1) // 2, x.shape[-1]

    def offset(i):
        return i - r if i < r else (i - (size - 1 - r) if i > size - 1 - r else 0)

    q = F.unfold(F.pad(x, (r,) * 4), patch).transpose(1, 2)
    k = F.unfold(F.pad(train, (r,) * 4), patch).transpose(1, 2)
    out = torch.zeros(len(x), size * size, dtype=x.dtype)
    for u in range(size * size):
        cls = (offset(u // size), offset(u % size))
        locs = [v for v in range(size * size) if (offset(v // size), offset(v % size)) == cls] \
            if equivariant else [u]
        keys, values = k[:, locs].reshape(-1, k.shape[-1]), train.flatten(2)[:, 0, locs]
        d2 = ((q[:, u, None] - keys[None]) ** 2).sum(-1)
        out[:, u] = torch.softmax(-d2 / (2 * s * s), 1) @ values.reshape(-1)
    return out.reshape(x.shape)


@pytest.mark.parametrize("patch", [1, 3, 5])
@pytest.mark.parametrize("equivariant", [False, True])
def test_zero_padding_machines_match_a_pixel_by_pixel_reference(patch, equivariant):
    train, x = _images(4, size=6, seed=10), torch.randn(2, 1, 6, 6, dtype=F64)
    machine = LocalScoreDenoiser(train, patch, equivariant, boundary="zeros")
    assert torch.allclose(machine(x, 0.5), _reference_local(train, x, 0.5, patch, equivariant),
                          atol=1e-12)


def test_patch_schedule_per_sigma_and_mixed_batches():
    train, x = _images(5, size=7, seed=11), torch.randn(3, 1, 7, 7, dtype=F64)
    schedule = PatchSchedule.from_pairs([(0.1, 1), (0.5, 3), (2.0, 7)])
    assert [schedule(s) for s in (0.01, 0.1, 0.4, 0.5, 1.9, 2.0, 80)] == [1, 1, 1, 3, 3, 7, 7]
    els = LocalScoreDenoiser(train, schedule)
    sigmas = torch.tensor([0.05, 0.6, 3.0], dtype=F64)
    rows = [LocalScoreDenoiser(train, p)(x[i: i + 1], float(sigmas[i]))
            for i, p in enumerate((1, 3, 7))]
    assert torch.allclose(els(x, sigmas), torch.cat(rows), atol=1e-12)


def test_bad_patches_and_sets_too_large_for_memory_are_one_line(monkeypatch):
    for patch, message in ((4, "odd"), (9, "larger than the 7x7 image"), (0, "odd")):
        with pytest.raises(ProbeError, match=message):
            check_patch(patch, (1, 7, 7))
    monkeypatch.setattr("probe.baselines.run.available_memory", lambda: 1 << 30)
    with pytest.raises(ProbeError, match="--chunk"):
        check_memory("ideal", 60000, (3, 64, 64), chunk=0)
    check_memory("ideal", 60000, (3, 64, 64), chunk=1000)  # streamed: fine
