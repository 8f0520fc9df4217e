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

from probe import seeding

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


# ---------------------------------------------------------------- per-sample seeded noise
# Every sample owns its random streams, derived from (seed, sample index, stream): its initial
# noise and the noise a stochastic sampler injects never depend on the batch it is drawn in, on
# the device, or on which model runs it. So two models given the same seeds start from the same
# noise (Kadkhodaie et al.'s same-noise comparison), and resampling one seed reproduces it.

INITIAL, INJECTED = "sample-initial", "sample-injected"  # probe.seeding stream names


def sample_seed(seed: int, index: int, stream: str = INITIAL) -> int:
    """The 63-bit generator seed of one sample's stream (probe.seeding: well mixed, platform
    independent)."""
    return seeding.state(seed, stream, index)


def initial_noise(seeds, shape: tuple[int, ...], device=None, dtype=torch.float32
                  ) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape]; row j depends only on seeds[j], a
    (seed, sample index) pair (a bare integer s means (s, 0))."""
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(_generator_seed(s, INITIAL))
        rows.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=device, dtype=dtype)


def _generator_seed(s, stream: int) -> int:
    if isinstance(s, tuple | list):
        return sample_seed(int(s[0]), int(s[1]), stream)
    return sample_seed(int(s), 0, stream)


class StepNoise:
    """The noise stochastic samplers inject, one generator per sample (its INJECTED stream).

    `step_noise(rows)` draws the next standard normal [len(rows), *shape] for the batch rows
    `rows` (a LongTensor); a sample that stops early (Kadkhodaie's ascent) simply draws no more.
    """

    def __init__(self, seeds, shape: tuple[int, ...], device=None, dtype=torch.float32):
        self.generators = [torch.Generator().manual_seed(_generator_seed(s, INJECTED))
                           for s in seeds]
        self.shape, self.device, self.dtype = tuple(shape), device, dtype

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.stack([torch.randn(self.shape, generator=self.generators[int(r)])
                           for r in rows.tolist()])
        return out.to(device=self.device, dtype=self.dtype)


def _global_noise(x: torch.Tensor):
    """Default injected noise: the global torch RNG (not reproducible per sample)."""
    return lambda rows: torch.randn((len(rows), *x.shape[1:]), device=x.device, dtype=x.dtype)


# ------------------------------------------------------------------------ DDPM ancestral


@torch.no_grad()
def ddpm(denoiser, noise, sigmas, class_labels=None, callback: Callback = None,
         step_noise=None, variance: str = "small"):
    """DDPM ancestral sampling (Ho et al.), written in sigma space.

    The DDPM posterior q(x_s | x_t, x0), rescaled by x = x_t / sqrt(abar), is the
    variance-exploding posterior: mean x0 + (sigma_s / sigma_t)^2 (x - x0), variance
    sigma_s^2 (1 - sigma_s^2 / sigma_t^2) ("small", diffusers' fixed_small), or beta's
    (sigma_t^2 - sigma_s^2)(1 + sigma_s^2) / (1 + sigma_t^2) ("large", fixed_large). So on
    the schedule's own sigmas (`ddpm_sigmas`) each step equals one DDPMScheduler step with
    x0 predicted by the model (tested); any other sigma grid works too, for any objective.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be small or large, got {variance!r}")
    x = noise * float(sigmas[0])
    draw = step_noise or _global_noise(x)
    rows = torch.arange(len(x))
    for i in range(len(sigmas) - 1):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma, class_labels)
        if callback:
            callback(i, sigma, x, denoised)
        if nxt == 0:
            x = denoised
            continue
        ratio = (nxt / sigma) ** 2
        if variance == "small":
            std = nxt * math.sqrt(1 - ratio)
        else:
            std = math.sqrt((sigma**2 - nxt**2) * (1 + nxt**2) / (1 + sigma**2))
        x = denoised + ratio * (x - denoised) + std * draw(rows).to(x)
    return x


# ------------------------------------------------- Kadkhodaie's stochastic coarse-to-fine ascent

# Kadkhodaie & Simoncelli (2021), as used by Kadkhodaie et al. (ICLR 2024): h0 = 0.01,
# beta = 0.1, sigma0 = 1, sigma_inf = 0.05 on their [0, 1] image scale. Our data span [-1, 1],
# twice that range, so the two noise levels are doubled here; h0 and beta are scale free, and the
# effective noise ||D(y) - y|| / sqrt(dim) scales with the data by itself.
KADKHODAIE_H0, KADKHODAIE_BETA = 0.01, 0.1
KADKHODAIE_SIGMA0, KADKHODAIE_SIGMA_INF = 2 * 1.0, 2 * 0.05


def kadkhodaie_sigmas(sigma0: float = KADKHODAIE_SIGMA0,
                      sigma_inf: float = KADKHODAIE_SIGMA_INF) -> torch.Tensor:
    """The ascent's only noise levels: where it starts and where it stops."""
    return torch.tensor([sigma0, sigma_inf], dtype=torch.float64)


@torch.no_grad()
def kadkhodaie(denoiser, noise, sigmas=None, class_labels=None, callback: Callback = None,
               step_noise=None, h0: float = KADKHODAIE_H0, beta: float = KADKHODAIE_BETA,
               max_steps: int = 2000):
    """Stochastic coarse-to-fine gradient ascent on the prior implicit in a denoiser.

    Starts at y = sigmas[0] * noise (mean 0: mid-grey) and repeats, per sample,
        f = D(y) - y,  sigma = ||f|| / sqrt(dim),  h = h0 t / (1 + h0 (t - 1)),
        gamma^2 = ((1 - beta h)^2 - (1 - h)^2) sigma^2,  y <- y + h f + gamma z
    until the effective noise sigma falls below sigmas[-1]; it returns D(y) of that last iterate
    (their final denoising step). Samples stop independently, so a sample's path does not
    depend on its batch; like the reference code, a sample also stops when its estimate
    diverges (above twice sigmas[0]) or after `max_steps`, returning its last D(y). A
    noise-conditioned denoiser (ddpm, edm) is told the previous step's sigma estimate
    (sigmas[0] at the first step); a blind one ignores it.
    """
    sigmas = kadkhodaie_sigmas() if sigmas is None else torch.as_tensor(sigmas)
    sigma0, sigma_inf = float(sigmas[0]), float(sigmas[sigmas > 0][-1])
    y = noise * sigma0
    dim = y[0].numel()
    draw = step_noise or _global_noise(y)
    estimate = torch.full((len(y),), sigma0, dtype=y.dtype, device=y.device)
    denoised = y.clone()
    active = torch.arange(len(y), device=y.device)  # rows still ascending
    for t in range(1, max_steps + 1):
        ya = y[active]
        labels = None if class_labels is None else class_labels[active]
        da = denoiser(ya, estimate[active], labels)
        f = da - ya
        s = f.flatten(1).norm(dim=1) / math.sqrt(dim)
        denoised[active], estimate[active] = da, s
        if callback:
            callback(t - 1, float(s.max()), y, denoised)
        keep = (s >= sigma_inf) & (s <= 2 * sigma0)
        active, ya, f, s = active[keep], ya[keep], f[keep], s[keep]
        if len(active) == 0:
            break
        h = h0 * t / (1 + h0 * (t - 1))
        gamma = s * math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2)
        y[active] = ya + h * f + gamma.reshape(-1, *[1] * (y.ndim - 1)) * draw(active).to(y)
    return denoised


SAMPLERS["ddpm"] = ddpm
SAMPLERS["kadkhodaie"] = kadkhodaie
STOCHASTIC = ("ddpm", "kadkhodaie")  # samplers that take `step_noise`


# The sampler `auto` picks per objective, measured on short CPU runs (bf-unet-xs, MNIST 16x16):
# - ddpm: DDPM's ancestral sampler. The deterministic ODE (ddim) carries a short run's
#   large-sigma epsilon error all the way down: a few samples diverge.
# - edm: the ancestral sampler on EDM's noise levels. On a run that memorized N = 10 digits it
#   reproduces them at 30.4 dB against 26.8 dB for Heun (contrast 0.97 both).
# - blind: Kadkhodaie et al.'s stochastic ascent, the sampler of the objective's own paper
#   (bias-free blind models sample faint with any sampler started at mean grey: contrast
#   0.81 with the ascent, 0.34 with Heun; train them with `edm` for full contrast).
DEFAULT_SAMPLERS = {"ddpm": "ddpm", "edm": "ddpm", "blind": "kadkhodaie"}


def default_sampler(objective: str) -> str:
    return DEFAULT_SAMPLERS.get(objective, "heun")


def resolve_sampler(name: str, denoiser) -> str:
    """`auto` -> the sampler that fits the denoiser's objective; any other name unchanged."""
    return default_sampler(getattr(denoiser, "objective", "")) if name == "auto" else name


def sampler_sigmas(name: str, denoiser, steps: int) -> torch.Tensor:
    """The noise levels `name` walks for this denoiser (`steps` is unused by kadkhodaie)."""
    name = resolve_sampler(name, denoiser)
    return kadkhodaie_sigmas() if name == "kadkhodaie" else default_sigmas(denoiser, steps)


def sample_from_seeds(denoiser, seeds, name: str = "ddim", steps: int = 50,
                      class_labels=None, callback: Callback = None, sigmas=None, device=None,
                      **kwargs) -> torch.Tensor:
    """Draw one sample per seed with sampler `name` (`auto`: the one that fits the objective):
    initial and injected noise per seed."""
    name = resolve_sampler(name, denoiser)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    shape = (denoiser.channels, denoiser.image_size, denoiser.image_size)
    noise = initial_noise(seeds, shape, device=device)
    sigmas = sampler_sigmas(name, denoiser, steps) if sigmas is None else sigmas
    if name in STOCHASTIC:
        kwargs["step_noise"] = StepNoise(seeds, shape, device=device)
    return SAMPLERS[name](denoiser, noise, sigmas, class_labels, callback, **kwargs)
