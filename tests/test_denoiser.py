"""The Denoiser interface, the DDPM schedule, the losses and the samplers, on closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probe.diffusion.losses import blind_loss, ddpm_loss, edm_loss
from probe.diffusion.samplers import (
    SAMPLERS,
    ddpm_sigmas,
    default_sigmas,
    euler,
    heun,
    karras_sigmas,
)
from probe.diffusion.schedules import LinearSchedule
from probe.models.denoiser import SIGMA_DATA, Denoiser
from probe.models.dit import DiT

SCHEDULE = LinearSchedule()


class Recorder(nn.Module):
    """A backbone with a closed form: out = scale * x (optionally 2C channels); records inputs."""

    def __init__(self, scale: float = 0.0, learn_sigma: bool = False):
        super().__init__()
        self.scale, self.learn_sigma, self.calls = scale, learn_sigma, []

    def forward(self, x, noise_cond, class_labels=None):
        self.calls.append((x.clone(), noise_cond.clone()))
        out = self.scale * x
        return torch.cat([out, torch.full_like(x, 123.0)], 1) if self.learn_sigma else out


def _noisy(b=4, c=1, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, s, s, generator=g), torch.tensor([0.02, 0.5, 3.0, 80.0])[:b]


@pytest.mark.parametrize("backbone", ["zero", "dit"])
def test_zero_backbone_closed_forms(backbone):
    """F = 0: ddpm -> x_noisy (no noise predicted), edm -> c_skip * x, blind -> x."""
    x, sigma = _noisy()
    s = sigma.reshape(-1, 1, 1, 1)
    expected = {"ddpm": x, "edm": SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2) * x, "blind": x}
    for objective, want in expected.items():
        # A fresh DiT is a zero backbone too (adaLN-Zero).
        net = Recorder(0.0) if backbone == "zero" else DiT(image_size=5, patch=1, width=16,
                                                           depth=1, heads=2)
        out = Denoiser(net, objective)(x, sigma)
        assert torch.allclose(out, want, atol=1e-6, rtol=1e-6), objective


def test_identity_backbone_closed_forms_and_conditioning_inputs():
    x, sigma = _noisy()
    s = sigma.reshape(-1, 1, 1, 1)
    sd2 = SIGMA_DATA**2

    net = Recorder(1.0, learn_sigma=True)  # the variance channels must be ignored
    out = Denoiser(net, "ddpm")(x, sigma)
    x_t, t = net.calls[-1]
    assert torch.allclose(x_t, x / (1 + s**2).sqrt(), atol=1e-6)  # x_t = sqrt(abar) x_noisy
    assert torch.allclose(t, SCHEDULE.timestep(sigma))
    assert torch.allclose(out, x - s * x / (1 + s**2).sqrt(), atol=1e-5)

    net = Recorder(1.0)
    out = Denoiser(net, "edm")(x, sigma)
    x_in, c_noise = net.calls[-1]
    c_in = 1 / (s**2 + sd2).sqrt()
    assert torch.allclose(x_in, c_in * x, atol=1e-6)
    assert torch.allclose(c_noise, sigma.log() / 4, atol=1e-6)
    c_skip, c_out = sd2 / (s**2 + sd2), s * SIGMA_DATA / (s**2 + sd2).sqrt()
    assert torch.allclose(out, c_skip * x + c_out * c_in * x, atol=1e-6)

    net = Recorder(1.0)
    out = Denoiser(net, "blind")(x, sigma)
    assert torch.equal(net.calls[-1][1], torch.zeros(4))  # blind: no noise level goes in
    assert torch.equal(out, torch.zeros_like(x))


def test_scalar_sigma_broadcasts():
    x, _ = _noisy()
    den = Denoiser(Recorder(1.0), "edm")
    assert torch.allclose(den(x, 0.7), den(x, torch.full((4,), 0.7)))


class DDPMOracle(nn.Module):
    """Predicts the exact epsilon of a known x0 from (x_t, t), through the discrete schedule:
    eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), abar interpolated at a continuous t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.abar = SCHEDULE.alphas_cumprod()

    def forward(self, x_t, t, class_labels=None):
        t = t.double()
        lo = t.floor().long().clamp(0, SCHEDULE.steps - 1)
        hi = (lo + 1).clamp(max=SCHEDULE.steps - 1)
        frac = t - lo
        # abar of the log-sigma interpolation the Denoiser uses between grid points.
        log_s = lambda a: 0.5 * ((1 - a) / a).log()  # noqa: E731
        log_sigma = (1 - frac) * log_s(self.abar[lo]) + frac * log_s(self.abar[hi])
        abar = (1 / (1 + (2 * log_sigma).exp())).float().reshape(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()


def test_ddpm_denoiser_inverts_the_training_parametrisation():
    """The eps the training loss asks for, fed back through the Denoiser, returns x0 exactly:
    the loss's x_t = sqrt(abar) x0 + sqrt(1-abar) eps and the Denoiser's sigma view agree."""
    x0, _ = _noisy(seed=1)
    x0 = x0.clamp(-1, 1)
    oracle = DDPMOracle(x0)
    den = Denoiser(oracle, "ddpm")
    noise = torch.randn_like(x0)
    for sigma in [0.015, 0.3, 1.0, 7.5, 100.0, *SCHEDULE.sigmas()[[0, 500, 999]].tolist()]:
        out = den(x0 + sigma * noise, sigma)
        assert torch.allclose(out, x0, atol=1e-4 * max(1.0, sigma)), sigma
    assert ddpm_loss(den, x0, generator=torch.Generator().manual_seed(0)) < 1e-8


def test_edm_and_blind_losses_vanish_for_the_oracle():
    x0, _ = _noisy(seed=2)

    class EDMOracle(nn.Module):  # F such that c_skip x + c_out F = x0
        def forward(self, x_in, c_noise, class_labels=None):
            s = (4 * c_noise).exp().reshape(-1, 1, 1, 1)
            sd2 = SIGMA_DATA**2
            x = x_in * (s**2 + sd2).sqrt()
            return (x0 - sd2 / (s**2 + sd2) * x) / (s * SIGMA_DATA / (s**2 + sd2).sqrt())

    class BlindOracle(nn.Module):  # predicts the residual x - x0
        def forward(self, x, t, class_labels=None):
            return x - x0

    g = torch.Generator().manual_seed(0)
    assert edm_loss(Denoiser(EDMOracle(), "edm"), x0, generator=g) < 1e-8
    assert blind_loss(Denoiser(BlindOracle(), "blind"), x0, generator=g) < 1e-10
    # A zero backbone returns x_noisy, so it pays the noise: E[sigma^2] = E[(2 u^2)^2] = 4/5.
    zeros = torch.zeros(4096, 1, 4, 4)
    assert blind_loss(Denoiser(Recorder(0.0), "blind"), zeros, generator=g).item() == \
        pytest.approx(0.8, abs=0.06)


def test_ddpm_loss_is_the_noise_mse_for_a_zero_backbone():
    # eps_hat = 0: the loss is the mean square of the drawn noise, ~1 for many elements.
    x0 = torch.zeros(64, 1, 16, 16)
    loss = ddpm_loss(Denoiser(Recorder(0.0), "ddpm"), x0, generator=torch.Generator())
    assert loss.item() == pytest.approx(1.0, abs=0.02)


def test_schedule_values():
    betas = SCHEDULE.betas()
    assert len(betas) == 1000
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    abar = SCHEDULE.alphas_cumprod()
    sigmas = SCHEDULE.sigmas()
    assert torch.all(sigmas[1:] > sigmas[:-1])  # sigma(t) increasing
    assert torch.allclose(1 / (1 + sigmas**2), abar)  # abar = 1 / (1 + sigma^2)
    assert sigmas[0].item() == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))
    den = Denoiser(Recorder(), "ddpm")
    assert den.sigma_range == (pytest.approx(sigmas[0].item()), pytest.approx(sigmas[-1].item()))


def test_timestep_round_trips():
    sigmas = SCHEDULE.sigmas()
    grid = SCHEDULE.timestep(sigmas)
    assert torch.allclose(grid, torch.arange(1000, dtype=torch.float32), atol=1e-3)
    # Between grid points: log-sigma interpolation, so t -> sigma(t) -> t is the identity.
    t = torch.tensor([0.25, 3.5, 417.75, 998.9], dtype=torch.float64)
    lo = t.floor().long()
    frac = t - lo
    log_sigma = (1 - frac) * sigmas[lo].log() + frac * sigmas[lo + 1].log()
    assert torch.allclose(SCHEDULE.timestep(log_sigma.exp()).double(), t, atol=1e-4)
    # Monotone, and clamped at both ends of the schedule.
    dense = SCHEDULE.timestep(torch.logspace(-4, 4, 2001))
    assert torch.all(dense[1:] >= dense[:-1])
    assert dense[0] == 0 and dense[-1] == 999


def test_sampler_noise_levels():
    k = karras_sigmas(10, 0.002, 80.0)
    assert k[0].item() == pytest.approx(80.0) and k[-2].item() == pytest.approx(0.002)
    assert k[-1] == 0
    d = ddpm_sigmas(SCHEDULE, 25)
    assert d[0] == SCHEDULE.sigmas()[-1] and d[-2] == SCHEDULE.sigmas()[0] and d[-1] == 0
    for objective in ("ddpm", "edm", "blind"):
        den = Denoiser(Recorder(), objective)
        sig = default_sigmas(den, 12)
        assert len(sig) == 13 and sig[-1] == 0
        assert torch.all(sig[1:] < sig[:-1])  # strictly decreasing
        assert sig[0].item() == pytest.approx(den.sigma_range[1])
        assert sig[-2].item() == pytest.approx(den.sigma_range[0])


@pytest.mark.parametrize("name", ["ddim", "euler", "heun"])
def test_samplers_land_on_the_single_training_point(name):
    """D(x, s) = x0 (the optimal denoiser of a one-point data set): the ODE dx/ds = (x - x0)/s
    has straight solutions, x(s) = x0 + (s / s_max)(x_start - x0), which Euler/DDIM and Heun
    follow exactly, ending on x0."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g)
    seen = []
    s_max = 50.0
    out = SAMPLERS[name](lambda x, s, c=None: x0, noise, karras_sigmas(8, 0.01, s_max),
                         callback=lambda i, s, x, d: seen.append((s, x)))
    assert torch.allclose(out, x0, atol=1e-6)
    assert len(seen) == 8
    for s, x in seen:
        assert torch.allclose(x, x0 + s / s_max * (s_max * noise - x0), atol=1e-5)


S0, SIGMA_MAX, SIGMA_MIN = 0.5, 80.0, 0.002


def gaussian_denoiser(x, s, class_labels=None):
    """The exact denoiser of data N(0, S0^2 I): E[x0 | x0 + s n = x]."""
    return x * S0**2 / (S0**2 + s**2)


def gaussian_gain() -> float:
    """Data N(0, S0^2 I): the probability-flow ODE scales x by sqrt(S0^2 + s^2), from SIGMA_MAX
    down to SIGMA_MIN, and the final step denoises; so x_final / noise is this constant."""
    return (SIGMA_MAX * S0**2 / math.sqrt(S0**2 + SIGMA_MAX**2)
            / math.sqrt(S0**2 + SIGMA_MIN**2))


@pytest.mark.parametrize("sampler, steps, tol", [(euler, 512, 0.01), (heun, 64, 0.005)])
def test_gaussian_data_gets_the_right_variance(sampler, steps, tol):
    noise = torch.randn(2048, 1, 2, 2, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    out = sampler(gaussian_denoiser, noise, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX))
    gain = gaussian_gain()
    assert torch.allclose(out / noise, torch.full_like(out, gain), rtol=tol)
    # The data variance S0^2, up to the prior's mismatch S0^2 / SIGMA_MAX^2 (4e-5 here).
    assert out.std().item() == pytest.approx(S0, rel=0.03)


@pytest.mark.parametrize("sampler, order", [(euler, 1), (heun, 2)])
def test_sampler_convergence_order(sampler, order):
    """Doubling the steps divides the error by 2^order (first-order Euler, second-order Heun)."""
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    errors = [abs(sampler(gaussian_denoiser, one, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)).item()
                  / gaussian_gain() - 1) for n in (64, 128)]
    assert errors[0] / errors[1] == pytest.approx(2**order, rel=0.1)


def test_ddim_with_the_ddpm_schedule_reaches_a_gaussian_variance():
    s0 = 0.5
    den = Denoiser(Recorder(), "ddpm")
    sigmas = default_sigmas(den, 200)
    noise = torch.randn(2048, 1, 2, 2, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    out = euler(lambda x, s, c=None: x * s0**2 / (s0**2 + s**2), noise, sigmas)
    smax = float(sigmas[0])
    assert out.std().item() == pytest.approx(s0 * smax / math.hypot(s0, smax), rel=0.03)
