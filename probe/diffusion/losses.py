"""Training losses, one per objective, all over the same Denoiser."""

from __future__ import annotations

import math

import torch

from probe.models.denoiser import SIGMA_DATA, Denoiser

EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_loglik(x, mean, log_scale):
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian discretised to 256 bins (iDDPM)."""
    def cdf(z):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))

    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1 / 255)), cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _draw(sample, shape, shard):
    """`sample(shape)` as rank `shard[0]` of `shard[1]` sees it: the draw of the whole global
    batch, sliced. Under DDP every rank seeds the same stream and keeps its own rows, so the
    global batch gets the noise a single process would draw (not one copy per rank)."""
    rank, world = shard
    if world == 1:
        return sample(shape)
    b = shape[0]
    return sample((b * world, *shape[1:]))[rank * b:(rank + 1) * b]


def ddpm_loss(denoiser: Denoiser, x0, class_labels=None, generator=None, shard=(0, 1)):
    """MSE on epsilon at a uniform timestep; plus the variational bound on the learned variance
    (stop-gradient mean, as in iDDPM/DiT) when the backbone outputs 2C channels."""
    sched, c = denoiser.schedule, denoiser.channels
    b = x0.shape[0]
    t = _draw(lambda n: torch.randint(0, sched.steps, n, device=x0.device, generator=generator),
              (b,), shard)
    noise = _draw(lambda n: torch.randn(n, device=x0.device, generator=generator,
                                        dtype=x0.dtype), x0.shape, shard)
    abar_all = sched.alphas_cumprod().to(x0.device)
    abar = abar_all[t].float().reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    out = denoiser.backbone(x_t, t.float(), class_labels)
    eps = out[:, :c]
    loss = (eps - noise).pow(2).mean(dim=(1, 2, 3))
    if out.shape[1] == 2 * c:
        loss = loss + _vlb(sched, abar_all, x0, x_t, t, eps.detach(), out[:, c:])
    return loss.mean()


def _vlb(sched, abar_all, x0, x_t, t, eps, var_out):
    betas = sched.betas().to(x0.device)
    abar_prev_all = torch.cat([torch.ones(1, dtype=abar_all.dtype, device=x0.device),
                               abar_all[:-1]])
    post_var = betas * (1 - abar_prev_all) / (1 - abar_all)
    post_logvar = torch.cat([post_var[1:2], post_var[1:]]).log()

    def at(v):
        return v[t].float().reshape(-1, 1, 1, 1)

    beta, abar, abar_prev = at(betas), at(abar_all), at(abar_prev_all)
    coef1 = beta * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)
    true_mean = coef1 * x0 + coef2 * x_t
    frac = (var_out + 1) / 2
    model_logvar = frac * beta.log() + (1 - frac) * at(post_logvar)
    x0_pred = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
    model_mean = coef1 * x0_pred + coef2 * x_t
    kl = _normal_kl(true_mean, at(post_logvar), model_mean, model_logvar)
    kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -_discretized_gaussian_loglik(x0, model_mean, 0.5 * model_logvar)
    nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def edm_loss(denoiser: Denoiser, x0, class_labels=None, generator=None, shard=(0, 1)):
    b = x0.shape[0]
    log_sigma = EDM_P_MEAN + EDM_P_STD * _draw(
        lambda n: torch.randn(n, device=x0.device, generator=generator), (b,), shard)
    sigma = log_sigma.exp()
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    noise = _draw(lambda n: torch.randn(n, device=x0.device, generator=generator,
                                        dtype=x0.dtype), x0.shape, shard)
    denoised = denoiser(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, class_labels)
    return (weight * (denoised - x0).pow(2).mean(dim=(1, 2, 3))).mean()


def blind_loss(denoiser: Denoiser, x0, class_labels=None, generator=None, shard=(0, 1)):
    """Kadkhodaie et al.: noise std u^2 on the [0, 1] scale (u uniform), i.e. 2 u^2 here."""
    b = x0.shape[0]
    sigma = 2 * _draw(lambda n: torch.rand(n, device=x0.device, generator=generator), (b,),
                      shard) ** 2
    noise = _draw(lambda n: torch.randn(n, device=x0.device, generator=generator,
                                        dtype=x0.dtype), x0.shape, shard)
    denoised = denoiser(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, class_labels)
    return (denoised - x0).pow(2).mean()


LOSSES = {"ddpm": ddpm_loss, "edm": edm_loss, "blind": blind_loss}


def training_loss(denoiser: Denoiser, x0, class_labels=None, generator=None, shard=(0, 1)):
    """The objective's loss on `x0`; `shard` = (rank, world) under DDP, where `x0` is this
    rank's slice of the global batch (see `_draw`)."""
    return LOSSES[denoiser.objective](denoiser, x0, class_labels, generator, shard)
