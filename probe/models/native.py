"""A network trained on another value range or noise convention, behind D(x_noisy, sigma).

Probes speak of x on [-1, 1] and x_noisy = x + sigma z with sigma on that scale. A network
trained on data in [lo, hi] sees y = a x + b with a = (hi - lo) / 2, b = (hi + lo) / 2 (for
[0, 1]: y = (x + 1) / 2), its noise std is a * sigma (half the probe's sigma for [0, 1]; on the
0..255 scale of Mohan et al. that is 255 a sigma), and its clean estimate maps back as
D(x_noisy, sigma) = (f(a x_noisy + b) - b) / a. The map is affine with slope 1, so the Jacobian
dD/dx equals the network's own dF/dy: eigenvalues, trace and eigenvectors are unchanged. The
origin is not: a bias-free network is linear about its own zero, f(y) = J(y) y, which is
x = -b / a on the probe's scale (-1 for [0, 1] data). `native_origin` says where that is, and
the Jacobian probe measures linearity about it.

How the noise level reaches the network (`noise_input`):

- `none`: blind, f(y) (Mohan et al., Kadkhodaie et al.: no noise input at all; sigma is ignored);
- `sigma`: f(y, a sigma), the std on the network's scale, one per image [B];
- `t`: a DDPM network on the linear-beta schedule (1e-4 .. 0.02, T = 1000): it gets the scaled
  state x_t = y / sqrt(1 + s^2) (s = a sigma) at the continuous timestep of s and predicts the
  noise, so f = y - s eps.

`predicts` says what `none` / `sigma` networks return: `x0` (the clean image) or `noise` (the
residual, clean = y - out; Kadkhodaie et al.'s UNets and BF_CNNs). Output channels beyond the
image's (a learned variance) are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from probe.diffusion.schedules import LinearSchedule
from probe.models.denoiser import Denoiser

NOISE_INPUTS = ("none", "sigma", "t")
PREDICTS = ("x0", "noise")
# How samplers treat each: a blind network samples by Kadkhodaie's ascent, a continuous-sigma
# one on EDM's sigma range, a timestep one on the DDPM schedule.
OBJECTIVE_OF = {"none": "blind", "sigma": "edm", "t": "ddpm"}


def affine(value_range: tuple[float, float]) -> tuple[float, float]:
    """(a, b) with y = a x + b mapping [-1, 1] onto `value_range`."""
    lo, hi = value_range
    return (hi - lo) / 2, (hi + lo) / 2


def native_origin(value_range: tuple[float, float]) -> float:
    """The network's zero on the probe's [-1, 1] scale: -b / a."""
    a, b = affine(value_range)
    return -b / a


class RangeDenoiser(Denoiser):
    """D(x_noisy, sigma) on [-1, 1] for `network` trained on `value_range` (see module doc)."""

    def __init__(self, network: nn.Module, value_range: tuple[float, float] = (0.0, 1.0),
                 noise_input: str = "none", predicts: str = "x0", channels: int = 1,
                 image_size: int | None = None):
        if noise_input not in NOISE_INPUTS:
            raise ValueError(f"noise input must be one of {NOISE_INPUTS}, got {noise_input!r}")
        if predicts not in PREDICTS:
            raise ValueError(f"prediction must be one of {PREDICTS}, got {predicts!r}")
        super().__init__(network, OBJECTIVE_OF[noise_input], channels, image_size,
                         LinearSchedule())
        self.value_range = tuple(float(v) for v in value_range)
        self.noise_input, self.predicts = noise_input, predicts
        self.scale, self.shift = affine(self.value_range)

    def forward(self, x_noisy: torch.Tensor, sigma, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        a, b, c = self.scale, self.shift, self.channels
        y = x_noisy * a + b if (a, b) != (1.0, 0.0) else x_noisy
        if self.noise_input == "none":
            clean = self._clean(y, self.backbone(y)[:, :c])
        else:
            s = torch.as_tensor(sigma, dtype=x_noisy.dtype, device=x_noisy.device) * a
            s = s.expand(x_noisy.shape[0]) if s.ndim == 0 else s.reshape(-1)
            if self.noise_input == "sigma":
                clean = self._clean(y, self.backbone(y, s)[:, :c])
            else:
                s4 = s.reshape(-1, 1, 1, 1)
                eps = self.backbone(y / (1 + s4**2).sqrt(), self.schedule.timestep(s))[:, :c]
                clean = y - s4 * eps
        return (clean - b) / a if (a, b) != (1.0, 0.0) else clean

    def _clean(self, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return y - out if self.predicts == "noise" else out
