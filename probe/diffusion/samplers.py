"""Samplers over the Denoiser interface, in sigma space: x_noisy = x0 + sigma * noise.

Pure functions: `sampler(denoiser, noise, sigmas, class_labels=None, callback=None)` starts at
`sigmas[0] * noise` and walks down the decreasing `sigmas`; `callback(i, sigma, x, denoised)` sees
every step. In sigma space DDIM (eta = 0) is exactly Euler on the probability-flow ODE
dx/dsigma = (x - D(x, sigma)) / sigma, for any objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None] | None


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0
                  ) -> torch.Tensor:
    """EDM's noise levels, descending, with a final 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def ddpm_sigmas(schedule, steps: int) -> torch.Tensor:
    """DDIM's evenly spaced timesteps (T-1 ... 0) as sigmas, descending, with a final 0."""
    t = torch.linspace(schedule.steps - 1, 0, steps).round().long()
    return torch.cat([schedule.sigmas()[t], torch.zeros(1, dtype=torch.float64)])


def default_sigmas(denoiser, steps: int) -> torch.Tensor:
    if denoiser.objective == "ddpm":
        return ddpm_sigmas(denoiser.schedule, steps)
    lo, hi = denoiser.sigma_range
    if denoiser.objective == "edm":
        return karras_sigmas(steps, lo, hi)
    return torch.cat([torch.logspace(math.log10(hi), math.log10(lo), steps, dtype=torch.float64),
                      torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def euler(denoiser, noise, sigmas, class_labels=None, callback: Callback = None):
    """DDIM (eta = 0) / Euler on the probability-flow ODE."""
    x = noise * float(sigmas[0])
    for i in range(len(sigmas) - 1):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma, class_labels)
        if callback:
            callback(i, sigma, x, denoised)
        x = denoised if nxt == 0 else x + (nxt - sigma) * (x - denoised) / sigma
    return x


@torch.no_grad()
def heun(denoiser, noise, sigmas, class_labels=None, callback: Callback = None):
    """EDM's 2nd-order Heun sampler (deterministic)."""
    x = noise * float(sigmas[0])
    for i in range(len(sigmas) - 1):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma, class_labels)
        if callback:
            callback(i, sigma, x, denoised)
        d = (x - denoised) / sigma
        x_next = x + (nxt - sigma) * d
        if nxt > 0:
            d_next = (x_next - denoiser(x_next, nxt, class_labels)) / nxt
            x_next = x + (nxt - sigma) * (d + d_next) / 2
        x = x_next
    return x


SAMPLERS = {"ddim": euler, "euler": euler, "heun": heun}
