"""The matrix-free solver behind `--method lanczos`, on explicit matrices with known answers."""

import numpy as np
import pytest

from probe.probes import lanczos


def products(matrix):
    return (lambda v: matrix @ v), (lambda u: matrix.T @ u)


def decaying(d: int, seed: int, asymmetry: float) -> np.ndarray:
    """A denoiser-like J: symmetric part with eigenvalues 1/(1 + (i/8)^2), plus an
    antisymmetric part of the given relative size."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    s = q @ np.diag(1 / (1 + (np.arange(d) / 8) ** 2)) @ q.T
    k = rng.standard_normal((d, d))
    k = (k - k.T) / 2
    return s + asymmetry * np.linalg.norm(s) / np.linalg.norm(k) * k


# singular values: one block step leaves an error that grows with the asymmetry (denoisers'
# is a few per cent; 0.5 of random, full-rank antisymmetric noise is far beyond it)
@pytest.mark.parametrize("asymmetry, sv_rtol", [(0.0, 1e-7), (0.05, 1e-5), (0.5, 2e-3)])
def test_ritz_pairs_match_dense_decompositions(asymmetry, sv_rtol):
    d, k = 300, 12
    j = decaying(d, 0, asymmetry)
    jv, jtv = products(j)
    basis = lanczos.symmetric_lanczos(jv, jtv, d, k, 1e-8, np.random.default_rng(1))
    assert basis.size < d  # stopped by the residual test, not by exhausting the space
    eigen = lanczos.ritz_eigen(basis, k)
    exact = np.sort(np.linalg.eigvalsh((j + j.T) / 2))[::-1][:k]
    np.testing.assert_allclose(eigen.values, exact, rtol=1e-7)
    # the residuals are exact (computed from stored products), and within the tolerance
    s = (j + j.T) / 2
    np.testing.assert_allclose(eigen.residuals,
                               np.linalg.norm(s @ eigen.vectors - eigen.vectors * eigen.values,
                                              axis=0), atol=1e-12)
    assert lanczos.converged(eigen, 1e-8)
    svd = lanczos.ritz_singular(basis, k, jtv)
    u, sv, vt = np.linalg.svd(j)
    np.testing.assert_allclose(svd.values, sv[:k], rtol=sv_rtol)
    np.testing.assert_allclose(j @ svd.right, svd.left * svd.values, atol=30 * sv_rtol)
    assert np.linalg.svd(vt[:k] @ svd.right, compute_uv=False).min() > 1 - 30 * sv_rtol


def test_ritz_singular_step_beats_the_plain_krylov_space():
    """The block step J^T U_k is what makes the singular values accurate when J is asymmetric."""
    d, k = 300, 12
    j = decaying(d, 2, 0.5)
    jv, jtv = products(j)
    basis = lanczos.symmetric_lanczos(jv, jtv, d, k, 1e-8, np.random.default_rng(3))
    plain = np.linalg.svd(basis.jq, compute_uv=False)[:k]
    exact = np.linalg.svd(j, compute_uv=False)[:k]
    stepped = lanczos.ritz_singular(basis, k, jtv).values
    assert np.abs(stepped / exact - 1).max() < 0.1 * np.abs(plain / exact - 1).max()


def test_repeated_eigenvalue_is_found_after_breakdowns():
    """A rank-3 projection: every Lanczos sequence breaks down after two steps; the check waits
    for a fresh random vector, so all three unit eigenvalues are found."""
    d = 50
    u = np.linalg.qr(np.random.default_rng(4).standard_normal((d, 3)))[0]
    jv, jtv = products(u @ u.T)
    basis = lanczos.symmetric_lanczos(jv, jtv, d, 5, 1e-10, np.random.default_rng(5))
    eigen = lanczos.ritz_eigen(basis, 5)
    np.testing.assert_allclose(eigen.values, [1, 1, 1, 0, 0], atol=1e-10)


def test_no_convergence_is_reported():
    d = 200
    jv, jtv = products(decaying(d, 6, 0.0))
    with pytest.raises(lanczos.NoConvergence):
        lanczos.symmetric_lanczos(jv, jtv, d, 40, 1e-12, np.random.default_rng(0), max_steps=41)


def test_deflated_hutchinson_is_exact_on_a_full_basis_and_unbiased_otherwise():
    d = 80
    j = decaying(d, 7, 0.3)
    jv, jtv = products(j)
    truth = (np.trace(j), (j**2).sum(), ((j - j.T) ** 2).sum())
    full = lanczos.symmetric_lanczos(jv, jtv, d, d - 1, 0.0, np.random.default_rng(0))
    assert full.size == d
    t = lanczos.deflated_hutchinson(full, jv, jtv, 4, np.random.default_rng(1))
    np.testing.assert_allclose((t.trace, t.frobenius2, t.asymmetry2), truth, rtol=1e-9)
    part = lanczos.symmetric_lanczos(jv, jtv, d, 4, 1e-6, np.random.default_rng(0))
    estimates = np.array([[*vars(lanczos.deflated_hutchinson(part, jv, jtv, 8,
                                                             np.random.default_rng(s))).values()]
                          for s in range(300)])
    mean, sem = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    assert np.all(np.abs(mean - truth) < 4 * sem + 1e-9)
