"""Kamb & Ganguli's calibration of the local machines: the patch size per noise level that best
matches a given trained model.

For each sigma, fixed noisy training images x = x0 + sigma z (probe.seeding's noise of (row,
sigma index), as every probe uses) go through the model and through the ls/els machine with
each candidate patch P; the chosen P maximises the median r^2 (probe.metrics.agreement) of the
machine's output against the model's. The result is a PatchSchedule with one knot per sigma;
in between, the patch of the next smaller knot applies.
"""

from __future__ import annotations

import numpy as np
import torch

from probe.baselines.local import LocalScoreDenoiser, PatchSchedule
from probe.errors import ProbeError
from probe.metrics.agreement import r2
from probe.seeding import fixed_noise


def candidate_patches(patches, shape) -> list[int]:
    """The odd candidates that fit the image (an even or too large one is simply dropped)."""
    size = min(int(shape[-2]), int(shape[-1]))
    out = sorted({int(p) for p in patches if p >= 1 and p % 2 == 1 and p <= size})
    if not out:
        raise ProbeError(f"no odd patch size among {list(patches)} fits a {size}x{size} image")
    return out


def noisy(x0: torch.Tensor, rows, sigma: float, sigma_index: int, seed: int) -> torch.Tensor:
    noise = torch.stack([fixed_noise(tuple(x0.shape[1:]), seed, int(r), sigma_index)
                         for r in rows])
    return x0 + sigma * noise.to(x0)


@torch.no_grad()
def calibrate(model, images, x0: torch.Tensor, rows, sigmas, patches, equivariant: bool,
              boundary: str, seed: int = 0, log=None) -> tuple[PatchSchedule, np.ndarray]:
    """(schedule, r2 [S, P] median agreement per sigma and candidate patch)."""
    patches = candidate_patches(patches, x0.shape)
    table = np.zeros((len(sigmas), len(patches)))
    machines = {p: LocalScoreDenoiser(images, p, equivariant, boundary) for p in patches}
    for si, sigma in enumerate(sigmas):
        x = noisy(x0, rows, float(sigma), si, seed)
        target = model(x, float(sigma))
        for pi, p in enumerate(patches):
            table[si, pi] = np.median(r2(target, machines[p](x, float(sigma))))
        if log:
            best = patches[int(table[si].argmax())]
            log(f"  calibration sigma {sigma:g}: patch {best} (r2 {table[si].max():.3f})")
    best = [patches[int(i)] for i in table.argmax(1)]
    return PatchSchedule.from_pairs(zip(sigmas, best)), table
