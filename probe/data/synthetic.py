"""Synthetic image sets with known structure (Kadkhodaie et al., ICLR 2024).

- Disks: a smooth 5-parameter manifold (centre x, centre y, radius, foreground and background
  intensity). At small noise an ideal denoiser projects onto its 5-D tangent space, so the
  Jacobian has five eigenvalues near 1 (`disk_tangent_basis` gives that space exactly).
- C^alpha images: two constant regions separated by a boundary curve of Hoelder regularity alpha.
  The optimal denoising PSNR grows with slope alpha / (alpha + 1) in log noise.

Images are float arrays in [0, 1], shape [count, size, size]; `to_uint8` quantises them for the
cache.
"""

from __future__ import annotations

import numpy as np

DISK_EDGE = 1.0  # edge width in pixels: keeps the manifold smooth (differentiable in all 5 params)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(z / 2))


def disk_params(count: int, size: int, seed: int = 0) -> np.ndarray:
    """[count, 5] parameters (cx, cy, radius, foreground, background), the disk inside the image."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0.15, 0.35, count) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    fg, bg = rng.uniform(0.0, 1.0, (2, count))
    return np.stack([cx, cy, radius, fg, bg], axis=1)


def render_disks(params: np.ndarray, size: int) -> np.ndarray:
    grid = np.arange(size) + 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    cx, cy, r, fg, bg = (params[:, i, None, None] for i in range(5))
    inside = _sigmoid((r - np.hypot(xx - cx, yy - cy)) / DISK_EDGE * 4)
    return bg + (fg - bg) * inside


def disks(count: int, size: int, seed: int = 0) -> np.ndarray:
    return render_disks(disk_params(count, size, seed), size)


def disk_tangent_basis(params: np.ndarray, size: int, eps: float = 1e-4) -> np.ndarray:
    """Orthonormal basis [size*size, 5] of the disk manifold's tangent space at one disk."""
    columns = []
    for i in range(5):
        step = np.zeros(5)
        step[i] = eps
        plus = render_disks((params + step)[None], size)[0]
        minus = render_disks((params - step)[None], size)[0]
        columns.append(((plus - minus) / (2 * eps)).ravel())
    q, _ = np.linalg.qr(np.stack(columns, axis=1))
    return q


def holder_curve(n: int, alpha: float, rng: np.random.Generator, terms: int = 64) -> np.ndarray:
    """A random periodic function on [0, 1) of Hoelder regularity alpha, sampled at n points.

    Fourier coefficients decay as k^-(alpha + 1/2): the standard random construction whose
    sample paths are C^alpha (up to log factors).
    """
    k = np.arange(1, terms + 1)
    amp = k ** -(alpha + 0.5)
    phase = rng.uniform(0, 2 * np.pi, terms)
    coef = rng.standard_normal(terms) * amp
    x = (np.arange(n) + 0.5) / n
    curve = (coef[:, None] * np.cos(2 * np.pi * k[:, None] * x[None] + phase[:, None])).sum(0)
    return curve / (np.abs(coef).sum() + 1e-12)  # within [-1, 1]


def c_alpha(count: int, size: int, alpha: float, seed: int = 0, supersample: int = 4
            ) -> np.ndarray:
    """Two constant intensities split by a C^alpha boundary, area-antialiased, randomly rotated."""
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    rng = np.random.default_rng(seed)
    fine = size * supersample
    out = np.empty((count, size, size))
    rows = (np.arange(fine) + 0.5) / fine
    for i in range(count):
        level = rng.uniform(0.3, 0.7) + 0.2 * holder_curve(fine, alpha, rng)
        below = rows[:, None] > level[None, :]  # [row, col]
        a, b = rng.uniform(0, 1, 2)
        img = np.where(below, a, b).reshape(size, supersample, size, supersample).mean((1, 3))
        out[i] = np.rot90(img, rng.integers(4))
    return out
