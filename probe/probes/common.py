"""What every probe's inputs share: the same images, chosen by a seeded permutation, and the
same noise per (image, sigma) for every run of a data set (probe.seeding), so runs (N, split,
architecture) are compared on identical inputs; and the checks of the options every probe has.
"""

from __future__ import annotations

import numpy as np

from probe import seeding
from probe.config import PROBE_SOURCES, check_sigmas
from probe.errors import ProbeError


def probe_indices(run, count: int, source: str = "test", seed: int = 0) -> np.ndarray:
    """`count` data-set rows from the run's held-out set or its own training subset, chosen by a
    seeded permutation (the test choice is the same for every run of the data set)."""
    if source not in PROBE_SOURCES:
        raise ProbeError(f"--from must be test or train, got {source!r}")
    pool = run.test_indices if source == "test" else run.train_indices
    if len(pool) == 0:
        raise ProbeError(f"{run.run_id} has no {source} images")
    order = seeding.numpy_rng(seed, "probe-images").permutation(len(pool))
    return pool[order[: min(count, len(pool))]]


def check_inputs(sigmas, source: str = "test", seed: int = 0) -> None:
    """The checks every probe's options share: positive, finite noise levels; a known source;
    a non-negative seed."""
    check_sigmas(sigmas)
    if source not in PROBE_SOURCES:
        raise ProbeError(f"--from must be test or train, got {source!r}")
    if seed < 0:
        raise ProbeError(f"--seed must be a non-negative integer, got {seed}")
