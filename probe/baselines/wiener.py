"""The optimal linear denoiser: the posterior mean of a Gaussian fitted to the training set.

With the training mean mu and covariance C = U diag(lambda) U^T (maximum likelihood, 1/N),

    D(x, s) = mu + C (C + s^2 I)^-1 (x - mu) = mu + U diag(lambda / (lambda + s^2)) U^T (x - mu).

It is the exact MMSE estimator when the data are Gaussian, and the best affine one otherwise.
Its Jacobian is the constant C (C + s^2 I)^-1: eigenvectors the principal components,
eigenvalues lambda / (lambda + s^2). The eigendecomposition is done once (float64); any sigma
then costs two [B, d] x [d, r] GEMMs. With N < d the covariance has rank N - 1 at most, so only
the thin SVD of the centred images is kept (r = min(N, d) columns: less memory, same D).

`stationary=True`: the translation-invariant (circulant) variant. The mean is one value per
channel and the covariance is diagonal in the 2-D Fourier basis (periodic boundaries), its
eigenvalues the power spectrum lambda_k = mean_i |F(x_i - m)_k|^2 (orthonormal FFT); channels
are treated as independent. D(x, s) = m + F^-1[lambda / (lambda + s^2) F(x - m)]: O(d log d).
"""

from __future__ import annotations

import torch

from probe.baselines.base import AnalyticDenoiser, as_images


class WienerDenoiser(AnalyticDenoiser):
    kind = "wiener"

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, eigenvalues: torch.Tensor,
                 shape: tuple[int, int, int]):
        super().__init__(shape)
        self.register_buffer("mean", mean.reshape(-1).float())
        self.register_buffer("basis", basis.float())  # [d, r], orthonormal columns
        self.register_buffer("eigenvalues", eigenvalues.float().clamp_min(0))  # [r]

    @classmethod
    def from_moments(cls, mean: torch.Tensor, cov: torch.Tensor, shape) -> WienerDenoiser:
        ev, u = torch.linalg.eigh(cov.double())
        order = ev.argsort(descending=True)
        return cls(mean, u[:, order], ev[order], shape)

    @classmethod
    def from_images(cls, images) -> WienerDenoiser:
        train = as_images(images)
        x = train.all(torch.float64).reshape(len(train), -1)
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vh.T, s.pow(2) / len(x), train.shape)

    def statistics(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "basis": self.basis, "eigenvalues": self.eigenvalues}

    def shrinkage(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda / (lambda + s^2) per sample [B, r] (sigma a [B, 1] column)."""
        ev = self.eigenvalues.to(sigma.dtype)
        return ev / (ev + sigma.pow(2))

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        s = self.sigma_column(sigma, x)
        u, mu = self.basis.to(x.dtype), self.mean.to(x.dtype)
        coef = ((x.reshape(len(x), -1) - mu) @ u) * self.shrinkage(s)
        return (mu + coef @ u.T).reshape(x.shape)


class StationaryWiener(AnalyticDenoiser):
    kind = "wiener-stationary"

    def __init__(self, mean: torch.Tensor, spectrum: torch.Tensor, shape):
        super().__init__(shape)
        self.register_buffer("mean", mean.reshape(-1, 1, 1).float())  # [C, 1, 1]
        self.register_buffer("spectrum", spectrum.float())  # [C, H, W]

    @classmethod
    def from_images(cls, images) -> StationaryWiener:
        train = as_images(images)
        x = train.all(torch.float64)
        mean = x.mean(dim=(0, 2, 3))
        f = torch.fft.fft2(x - mean.reshape(1, -1, 1, 1), norm="ortho")
        return cls(mean, f.abs().pow(2).mean(0), train.shape)

    def statistics(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "spectrum": self.spectrum}

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        s2 = self.sigma_column(sigma, x).pow(2).reshape(-1, 1, 1, 1)
        lam = self.spectrum.to(x.dtype)
        m = self.mean.to(x.dtype)
        f = torch.fft.fft2(x - m, norm="ortho") * (lam / (lam + s2))
        return m + torch.fft.ifft2(f, norm="ortho").real
