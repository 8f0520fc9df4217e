"""The one interface between models and probes: D(x_noisy, sigma) -> x0_hat.

`x_noisy = x0 + sigma * noise`, with x0 the data in [-1, 1]. How the backbone was trained is
hidden here, so a Jacobian, a PSNR curve or a sampler never cares which architecture it holds:

- `ddpm`: epsilon-prediction on the linear-beta discrete schedule (the DiT recipe). The input is
  scaled to the DDPM state x_t = x_noisy / sqrt(1 + sigma^2) and the timestep is sigma's
  continuous position on the schedule; x0_hat = x_noisy - sigma * eps_hat.
- `edm`: Karras et al. preconditioning, D = c_skip x + c_out F(c_in x, ln(sigma) / 4).
- `blind`: no noise-level input (Kadkhodaie et al.); the backbone predicts the residual noise,
  x0_hat = x_noisy - F(x_noisy).
"""

from __future__ import annotations

import torch
from torch import nn

from probe.config import OBJECTIVES
from probe.diffusion.schedules import LinearSchedule

SIGMA_DATA = 0.5  # EDM's data standard deviation on the [-1, 1] scale


class Denoiser(nn.Module):
    def __init__(self, backbone: nn.Module, objective: str = "ddpm", channels: int = 1,
                 image_size: int | None = None, schedule: LinearSchedule | None = None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}")
        self.backbone, self.objective, self.channels = backbone, objective, channels
        self.image_size = image_size  # what samplers draw; None where the caller decides
        self.schedule = schedule or LinearSchedule()

    @property
    def sigma_range(self) -> tuple[float, float]:
        """The noise levels the objective trains on (sampling starts at the top)."""
        if self.objective == "ddpm":
            sigmas = self.schedule.sigmas()
            return float(sigmas[0]), float(sigmas[-1])
        if self.objective == "edm":
            return 0.002, 80.0
        return 0.01, 2.0  # blind: sigma = 2 u^2 on the [-1, 1] scale

    def forward(self, x_noisy: torch.Tensor, sigma, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x_noisy.dtype, device=x_noisy.device)
        sigma = sigma.expand(x_noisy.shape[0]) if sigma.ndim == 0 else sigma.reshape(-1)
        s = sigma.reshape(-1, 1, 1, 1)
        c = self.channels
        if self.objective == "ddpm":
            t = self.schedule.timestep(sigma)
            eps = self.backbone(x_noisy / (1 + s**2).sqrt(), t, class_labels)[:, :c]
            return x_noisy - s * eps
        if self.objective == "edm":
            sd2 = SIGMA_DATA**2
            c_skip = sd2 / (s**2 + sd2)
            c_out = s * SIGMA_DATA / (s**2 + sd2).sqrt()
            c_in = 1 / (s**2 + sd2).sqrt()
            out = self.backbone(c_in * x_noisy, sigma.log() / 4, class_labels)[:, :c]
            return c_skip * x_noisy + c_out * out
        out = self.backbone(x_noisy, torch.zeros_like(sigma), class_labels)[:, :c]
        return x_noisy - out
