"""The DDPM discrete schedule and its continuous-sigma view.

Every probe speaks of x_noisy = x0 + sigma * noise. A DDPM state x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps is the same thing scaled: x_t = sqrt(abar) * (x0 + sigma * eps) with
sigma^2 = (1 - abar) / abar. So any sigma maps to abar = 1 / (1 + sigma^2) exactly, and to a
continuous timestep by interpolating log sigma over the discrete schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearSchedule:
    """DiT/ADM linear beta schedule: beta from 1e-4 to 0.02 over T = 1000 steps."""

    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1 - self.betas(), dim=0)

    def sigmas(self) -> torch.Tensor:
        """sigma(t) for t = 0..T-1 (increasing)."""
        abar = self.alphas_cumprod()
        return ((1 - abar) / abar).sqrt()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for sigma: log-sigma interpolation, clamped to [0, T-1]."""
        log_sigmas = self.sigmas().log().to(sigma.device)
        log_sigma = sigma.double().clamp_min(1e-12).log()
        idx = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.steps - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        frac = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        t = (idx - 1).double() + frac
        t = torch.where(log_sigma <= log_sigmas[0], torch.zeros_like(t), t)
        return t.float()
