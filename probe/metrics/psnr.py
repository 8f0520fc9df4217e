"""Denoising PSNR per noise level on fixed images with fixed noise, and the PSNR gap (An et al.).

PSNR = 10 log10(peak^2 / MSE) with peak = 2, the range of the model's [-1, 1] data, averaged
over images per sigma. The noise of (image, sigma) depends only on (seed, data-set row, sigma
index) (`probe.probes.common.fixed_noise`), so every run of a data set is scored on identical
noisy inputs. The gap at sigma is mean PSNR on the run's own training images minus on held-out
images: near 0 for a model that generalizes, large for one that memorizes.
"""

from __future__ import annotations

import numpy as np
import torch

from probe.seeding import fixed_noise

PEAK = 2.0  # data range of [-1, 1]
MSE_FLOOR = 1e-10  # caps PSNR at ~106 dB: an exact reconstruction stays a finite number


def psnr(estimate: torch.Tensor, target: torch.Tensor, peak: float = PEAK) -> np.ndarray:
    """Per-image PSNR in dB of `estimate` against `target` ([n, ...] each)."""
    mse = (estimate.double() - target.double()).flatten(1).pow(2).mean(1)
    return (10 * torch.log10(peak**2 / mse.clamp_min(MSE_FLOOR))).cpu().numpy()


@torch.no_grad()
def denoising_psnr(denoiser, images: torch.Tensor, rows, sigmas, seed: int = 0,
                   batch: int = 64, device=None, class_labels=None) -> np.ndarray:
    """PSNR [len(sigmas), len(images)] of D(x + sigma * noise, sigma) against x, where image i
    is data-set row rows[i] and its noise is `fixed_noise(shape, seed, rows[i], sigma index)`."""
    rows = np.asarray(rows, np.int64)
    if len(rows) != len(images):
        raise ValueError(f"{len(images)} images but {len(rows)} rows")
    device = device or torch.device("cpu")
    shape = tuple(images.shape[1:])
    out = np.empty((len(sigmas), len(images)))
    for j, sigma in enumerate(sigmas):
        for lo in range(0, len(images), batch):
            x = images[lo: lo + batch].to(device)
            noise = torch.stack([fixed_noise(shape, seed, r, j) for r in rows[lo: lo + batch]])
            labels = None if class_labels is None else class_labels[lo: lo + batch].to(device)
            estimate = denoiser(x + float(sigma) * noise.to(x), float(sigma), labels)
            out[j, lo: lo + batch] = psnr(estimate, x)
    return out


def psnr_gap(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-sigma gap: mean PSNR on training images minus on held-out images ([sigma, image])."""
    return np.asarray(train).mean(1) - np.asarray(test).mean(1)
