"""The file of `probe compare`: probes/<run-id>/compare.h5 (each group a resumable unit, see
probe.formats.h5.ResumableH5). <theory> is a theory's name (ideal, wiener, ls, els) or the run
id of another run compared against.

    onestep/<theory>/      r2, cosine float [sources, S, images]: agreement of D_theory(x, s)
                           with D_model(x, s) on fixed noisy images (sources: train, test;
                           fixed noise per (row, sigma)); sigmas [S]; rows [sources, images];
                           patches [S] (ls/els: the patch used at each sigma; 0 otherwise)
    calibration/<theory>/  ls/els with a calibrated patch: r2 [S, P] median agreement on noisy
                           training images of every candidate patch (patches [P]) per sigma
                           (sigmas [S]); best [S], the chosen patch
    trajectory/model/      samples [n, C, H, W] from the noise of (seed, i); seeds; nearest
                           (uint8 [n, H, W, C]) and nearest_rows: each sample's l2-nearest
                           training image; step_sigmas [T]; attrs sampler, steps
    trajectory/<theory>/   samples from the same noise and sampler on the model's noise levels;
                           r2 [n] final-sample agreement with the model's (Kamb & Ganguli's
                           Table 1 metric is its median); step_r2 [T, n] agreement of the two
                           denoised estimates at every step

Root attrs: the run's provenance, command, config, theories.
"""

from __future__ import annotations

ONESTEP, CALIBRATION, TRAJECTORY = "onestep", "calibration", "trajectory"
MODEL = "model"
SOURCES = ("train", "test")
LAYOUT = 1


def key(group: str, theory: str) -> str:
    return f"{group}/{theory}"
