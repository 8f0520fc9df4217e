"""The DDPM discrete schedule and its continuous-sigma view.

Every probe speaks of x_noisy = x0 + sigma * noise. A DDPM state x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps is the same thing scaled: x_t = sqrt(abar) * (x0 + sigma * eps) with
sigma^2 = (1 - abar) / abar. So any sigma maps to abar = 1 / (1 + sigma^2) exactly, and to a
continuous timestep by interpolating log sigma over the discrete schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DiscreteSchedule:
    """What every discrete schedule offers, from its `alphas_cumprod()` over `steps` steps."""

    steps: int

    def alphas_cumprod(self) -> torch.Tensor:
        raise NotImplementedError

    def betas(self) -> torch.Tensor:
        abar = self.alphas_cumprod()
        return 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])

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


@dataclass(frozen=True)
class LinearSchedule(DiscreteSchedule):
    """DiT/ADM linear beta schedule: beta from 1e-4 to 0.02 over T = 1000 steps."""

    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1 - self.betas(), dim=0)


@dataclass(frozen=True)
class TabulatedSchedule(DiscreteSchedule):
    """A schedule given by its table of alphas_cumprod: what a diffusers scheduler config
    (linear, scaled_linear, squaredcos_cap_v2, trained betas) computes, taken from diffusers'
    own scheduler so that no formula is re-derived here."""

    abar: tuple[float, ...]
    name: str = ""

    @property
    def steps(self) -> int:  # type: ignore[override]
        return len(self.abar)

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.tensor(self.abar, dtype=torch.float64)
