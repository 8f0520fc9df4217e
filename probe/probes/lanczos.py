"""Matrix-free top-k eigenpairs of S = (J + J^T)/2 and singular triplets of J, from products
with J and J^T only (each as costly as one Jacobian row).

One Lanczos process on S, with full reorthogonalisation, keeps every product it makes: for its
orthonormal basis Q [d, m] both J Q and J^T Q. That makes three things exact, not estimated:

- the Rayleigh-Ritz pairs of S on span(Q), since Q^T S Q = sym(Q^T (J Q));
- their residuals ||S x - theta x||, since S Q = (J Q + J^T Q)/2 is stored. The process stops
  when every top-k residual is below tol x |theta| (floored at 1e-3 of the largest |theta|):
  for a symmetric S an eigenvalue then lies within that distance of each theta (and the
  eigenvalue errors are in practice the square of it);
- J on span(Q), so the singular triplets of J are Ritz triplets too. span(Q) holds the top
  eigenvectors of S; J's singular vectors differ from them at first order in the asymmetry, so
  one more block product fixes that: J^T applied to the k left Ritz vectors U_k (k products)
  gives J^T on the left space span(Q, U_k), whose one-sided Ritz triplets (SVD of J^T [Q U_k])
  are one subspace iteration ahead. Measured on a d = 4096 DiT Jacobian (asymmetry 0.03):
  top-64 singular values 6e-5 -> 1.5e-7 relative error; with asymmetry 0.74, 5e-3 -> 8e-5.

ARPACK's `eigsh` and `svds` solve the two problems separately, restarting, and spend about twice
the products (benchmarks/bench_jacobian.py).

Trace and Frobenius norms are Hutchinson estimates deflated by the same basis (Hutch++,
Meyer et al. 2021): tr J = tr(Q^T J Q) + E[z'^T J z'] with z' = (I - QQ^T) z Rademacher, and
likewise ||J||_F^2 = ||J^T Q||_F^2 + E||J^T z'||^2 and ||J - J^T||_F^2; the exact part is the
large one, so a few probes do what many undeflated ones would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Product = Callable[[np.ndarray], np.ndarray]  # float64 [d] -> float64 [d]
RELATIVE_FLOOR = 1e-3  # residuals of Ritz values below this share of the largest are absolute
CHECK_EVERY = 4  # Lanczos steps between convergence checks (a check costs d x m x k flops)


class NoConvergence(RuntimeError):
    pass


@dataclass
class Krylov:
    """An orthonormal basis and the products of J and J^T with it (columns)."""

    q: np.ndarray  # [d, m]
    jq: np.ndarray  # J q
    jtq: np.ndarray  # J^T q

    @property
    def size(self) -> int:
        return self.q.shape[1]


@dataclass
class Eigen:
    values: np.ndarray  # [k] descending
    vectors: np.ndarray  # [d, k]
    residuals: np.ndarray  # ||S x - theta x|| per pair


def ritz_eigen(basis: Krylov, k: int) -> Eigen:
    """Top-k (largest algebraic) Ritz pairs of S on span(Q), with their exact residuals."""
    h = basis.q.T @ basis.jq
    theta, w = np.linalg.eigh((h + h.T) / 2)
    theta, w = theta[::-1][:k], w[:, ::-1][:, :k]
    s_x = (basis.jq @ w + basis.jtq @ w) / 2
    x = basis.q @ w
    return Eigen(theta.copy(), x, np.linalg.norm(s_x - x * theta, axis=0))


def converged(eigen: Eigen, tol: float) -> bool:
    scale = np.maximum(np.abs(eigen.values), RELATIVE_FLOOR * np.abs(eigen.values).max())
    return bool(np.all(eigen.residuals <= tol * scale))


def _orthogonalise(w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """w minus its components in span(q), twice (classical Gram-Schmidt, reorthogonalised)."""
    for _ in range(2):
        w = w - q @ (q.T @ w)
    return w


def symmetric_lanczos(jv: Product, jtv: Product, d: int, k: int, tol: float,
                      rng: np.random.Generator, max_steps: int | None = None) -> Krylov:
    """Lanczos on S = (J + J^T)/2 from a random start, until the top-k Ritz pairs converge (see
    the module doc) or the basis spans everything. Raises NoConvergence after max_steps."""
    cap = min(d, max_steps or d)
    q = np.empty((d, min(cap, 2 * k + 32)))
    jq, jtq = np.empty_like(q), np.empty_like(q)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    fresh = True  # v is a random start, not S times the previous vector
    scale = 0.0
    for m in range(cap):
        if m == q.shape[1]:  # grow the buffers
            q, jq, jtq = (np.concatenate([a, np.empty((d, min(cap, 2 * m) - m))], 1)
                          for a in (q, jq, jtq))
        q[:, m], jq[:, m], jtq[:, m] = v, jv(v), jtv(v)
        size = m + 1
        basis = Krylov(q[:, :size], jq[:, :size], jtq[:, :size])
        if size == d:
            break
        s_v = (jq[:, m] + jtq[:, m]) / 2
        scale = max(scale, np.linalg.norm(s_v))  # a lower bound of ||S||
        w = _orthogonalise(s_v, basis.q)
        norm = np.linalg.norm(w)
        invariant = norm <= 1e-10 * scale
        # An invariant span(Q) reached from a Lanczos vector says nothing of the rest of the
        # space (a vector's Krylov space holds one copy of a repeated eigenvalue): no check
        # until a random vector orthogonal to it has probed the rest.
        due = size >= k and ((size - k) % CHECK_EVERY == 0 or fresh)
        if due and (fresh or not invariant) and converged(ritz_eigen(basis, k), tol):
            break
        fresh = invariant
        if invariant:
            w = _orthogonalise(rng.standard_normal(d), basis.q)
            norm = np.linalg.norm(w)
        v = w / norm
    else:
        raise NoConvergence(f"no convergence in {cap} Lanczos steps")
    return Krylov(*(a[:, :size].copy() for a in (q, jq, jtq)))


@dataclass
class Singular:
    values: np.ndarray  # [k] descending
    left: np.ndarray  # [d, k]: J right = values * left
    right: np.ndarray  # [d, k]


def ritz_singular(basis: Krylov, k: int, jtv: Product) -> Singular:
    """Top-k singular triplets of J: Ritz triplets on span(Q), then one block step (k products
    J^T u) and Ritz triplets again with the left space span(Q, U_k) (see the module doc)."""
    u, _, _ = np.linalg.svd(basis.jq, full_matrices=False)  # J Q = u s wt: left vectors u
    left_k = u[:, :k]
    jt_left = np.stack([jtv(c) for c in left_k.T], 1)
    # The part of U_k outside span(Q), orthonormalised (n = U_k - Q Q^T U_k = p sv vt), and
    # J^T of it, by linearity from J^T U_k and J^T Q.
    coef = basis.q.T @ left_k
    p, sv, vt = np.linalg.svd(left_k - basis.q @ coef, full_matrices=False)
    rank = int((sv > 1e-8).sum())
    to_p = vt[:rank].T / sv[:rank]
    jt_p = (jt_left - basis.jtq @ coef) @ to_p
    space = np.concatenate([basis.q, p[:, :rank]], 1)
    right, s, wt = np.linalg.svd(np.concatenate([basis.jtq, jt_p], 1), full_matrices=False)
    return Singular(s[:k].copy(), space @ wt[:k].T, right[:, :k])  # J^T (L w) = s r


@dataclass
class Traces:
    trace: float
    frobenius2: float
    asymmetry2: float  # ||J - J^T||_F^2


def deflated_hutchinson(basis: Krylov, jv: Product, jtv: Product, probes: int,
                        rng: np.random.Generator) -> Traces:
    """tr J, ||J||_F^2 and ||J - J^T||_F^2: exact on span(Q) plus Hutchinson estimates with
    `probes` Rademacher vectors projected off span(Q) (2 products each)."""
    d = basis.q.shape[0]
    z = rng.choice([-1.0, 1.0], size=(d, probes))
    z -= basis.q @ (basis.q.T @ z)
    jz = np.stack([jv(c) for c in z.T], 1)
    jtz = np.stack([jtv(c) for c in z.T], 1)
    trace = np.trace(basis.q.T @ basis.jq) + (z * jtz).sum(0).mean()
    fro2 = (basis.jtq**2).sum() + (jtz**2).sum(0).mean()
    asym2 = ((basis.jq - basis.jtq) ** 2).sum() + ((jz - jtz) ** 2).sum(0).mean()
    return Traces(float(trace), float(fro2), float(asym2))
