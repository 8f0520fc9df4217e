"""Samplers: DDIM and DDPM equal diffusers' schedulers step for step on the ddpm objective,
per-sample seeded noise, and Kadkhodaie's ascent follows its designed noise decay."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from probe.diffusion import samplers as S
from probe.diffusion.schedules import LinearSchedule
from probe.models.denoiser import Denoiser

SHAPE = (1, 4, 4)


class ToyEps(torch.nn.Module):
    """A fixed nonlinear epsilon-predictor that depends on x_t and t."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4

    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        h = torch.tanh(x.flatten(1).double() @ self.w) * (0.5 + t / 1000)
        return h.reshape(x.shape).to(x.dtype)


def _diffusers_loop(scheduler, backbone, sigma_top, noise, generator=None):
    # Start from the same state as ours: x_T = sqrt(abar_T) * sigma_T * z.
    x = noise * sigma_top / math.sqrt(1 + sigma_top**2)
    for t in scheduler.timesteps:
        eps = backbone(x, t.float().expand(len(x)))
        kwargs = {"generator": generator} if generator is not None else {"eta": 0.0}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def _schedule_kwargs():
    s = LinearSchedule()
    return dict(num_train_timesteps=s.steps, beta_start=s.beta_start, beta_end=s.beta_end,
                beta_schedule="linear", clip_sample=False, prediction_type="epsilon")


def test_ddim_equals_diffusers_ddim_scheduler():
    backbone = ToyEps()
    denoiser = Denoiser(backbone, "ddpm", channels=1, image_size=4)
    scheduler = DDIMScheduler(**_schedule_kwargs(), set_alpha_to_one=True,
                              timestep_spacing="leading")
    scheduler.set_timesteps(25)
    sigmas = torch.cat([denoiser.schedule.sigmas()[scheduler.timesteps.long()],
                        torch.zeros(1, dtype=torch.float64)])
    noise = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(1))
    ours = S.SAMPLERS["ddim"](denoiser, noise, sigmas)
    theirs = _diffusers_loop(scheduler, backbone, float(sigmas[0]), noise)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("variance,diffusers_type", [("small", "fixed_small"),
                                                     ("large", "fixed_large")])
def test_ddpm_equals_diffusers_ddpm_scheduler(variance, diffusers_type):
    backbone = ToyEps(3)
    denoiser = Denoiser(backbone, "ddpm", channels=1, image_size=4)
    scheduler = DDPMScheduler(**_schedule_kwargs(), variance_type=diffusers_type,
                              timestep_spacing="linspace")
    scheduler.set_timesteps(20)
    sigmas = S.ddpm_sigmas(denoiser.schedule, 20)  # linspace spacing, as our default
    assert torch.equal(denoiser.schedule.sigmas()[scheduler.timesteps.long()], sigmas[:-1])
    noise = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(2))
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ours = S.ddpm(denoiser, noise, sigmas, variance=variance,
                  step_noise=lambda rows: torch.randn((len(rows), *SHAPE), generator=g_ours))
    theirs = _diffusers_loop(scheduler, backbone, float(sigmas[0]), noise, g_theirs)
    deterministic = S.euler(denoiser, noise, sigmas)
    assert (ours - deterministic).abs().max() > 0.05  # the injected noise matters ...
    torch.testing.assert_close(ours, theirs, atol=5e-4, rtol=1e-3)  # ... and is diffusers'


def test_same_seeds_same_initial_noise_for_two_models_and_any_batch():
    seen = {}

    def record(name):
        def callback(i, sigma, x, denoised):
            if i == 0:
                seen[name] = x.clone()
        return callback

    seeds = [(0, 3), (0, 4), (5, 0)]
    for name, seed in (("a", 0), ("b", 1)):
        denoiser = Denoiser(ToyEps(seed), "ddpm", channels=1, image_size=4)
        S.sample_from_seeds(denoiser, seeds, "ddpm", steps=3, callback=record(name))
    torch.testing.assert_close(seen["a"], seen["b"], atol=0, rtol=0)
    alone = S.initial_noise([(0, 4)], SHAPE)
    torch.testing.assert_close(alone[0], S.initial_noise(seeds, SHAPE)[1], atol=0, rtol=0)
    assert not torch.equal(S.initial_noise([(0, 3)], SHAPE), S.initial_noise([(1, 3)], SHAPE))
    # the injected stream is another stream than the initial noise
    assert not torch.equal(S.StepNoise([(0, 3)], SHAPE)(torch.tensor([0])), alone)


class PointMass(torch.nn.Module):
    """The posterior mean of a one-image training set: D(y) = x* for every y."""

    objective, channels = "blind", 1

    def __init__(self, target):
        super().__init__()
        self.target, self.image_size = target, target.shape[-1]

    def forward(self, x, sigma, class_labels=None):
        return self.target.expand_as(x).clone()


def test_kadkhodaie_noise_decays_by_one_minus_beta_h_and_lands_on_the_image():
    """With D(y) = x*, the update gives E||y' - x*||^2 = (1 - beta h_t)^2 ||y - x*||^2 exactly
    (the algorithm's design: without injected noise it would be (1 - h_t)^2); the ascent stops
    below sigma_inf and returns x*."""
    target = torch.zeros(1, 32, 32)
    denoiser = PointMass(target)
    paths, last = [], []

    def record(i, sigma, y, denoised):
        paths.append(y.flatten(1).pow(2).mean(1))  # = sigma_t^2 per sample, since x* = 0
        last.append(sigma)

    out = S.sample_from_seeds(denoiser, [(0, i) for i in range(64)], "kadkhodaie",
                              callback=record)
    h0, beta = S.KADKHODAIE_H0, S.KADKHODAIE_BETA
    energy = torch.stack(paths)  # [step, sample]
    first_stop = int((energy < S.KADKHODAIE_SIGMA_INF**2).any(1).float().argmax())
    assert first_stop > 50
    for t in range(1, first_stop):
        h = h0 * t / (1 + h0 * (t - 1))
        ratio = float(energy[t].mean() / energy[t - 1].mean())
        assert ratio == pytest.approx((1 - beta * h) ** 2, abs=0.03), t
    assert last[-1] < S.KADKHODAIE_SIGMA_INF
    torch.testing.assert_close(out, target.expand_as(out))


class Wiener(torch.nn.Module):
    """Exact posterior mean of Gaussian data N(0, Q diag(ev) Q^T)."""

    objective, channels, image_size = "blind", 1, 4

    def __init__(self, q, ev):
        super().__init__()
        self.q, self.ev = q, ev

    def forward(self, x, sigma, class_labels=None):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        c = (x.flatten(1).double() @ self.q) * (self.ev / (self.ev + s**2))
        return (c @ self.q.T).reshape(x.shape).to(x.dtype)


def test_kadkhodaie_samples_do_not_depend_on_their_batch_and_stay_on_the_support():
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    ev = torch.tensor([0.5] * 3 + [1e-6] * 13, dtype=torch.float64)
    denoiser = Wiener(q, ev)
    seeds = [(2, i) for i in range(40)]
    batch = S.sample_from_seeds(denoiser, seeds, "kadkhodaie")
    alone = S.sample_from_seeds(denoiser, seeds[7:9], "kadkhodaie")
    torch.testing.assert_close(batch[7:9], alone, atol=1e-6, rtol=0)
    flat = batch.flatten(1).double()
    outside = flat - (flat @ q[:, :3]) @ q[:, :3].T
    assert outside.norm() / flat.norm() < 1e-3


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sample_from_seeds(PointMass(torch.zeros(1, 2, 2)), [(0, 0)], "nope")
