"""Samples in a probe file: the group `samples` of samples.h5 (and of generalization.h5).

    images  float32 [n, C, H, W] in [-1, 1]
    uint8   uint8   [n, H, W, C]
    seeds   int64   [n, 2]        (seed, i): sample i is drawn from the noise of (seed, i)

attrs sampler, steps. probes/<run-id>/samples.h5 also carries the run's provenance, the config
and the sampler's noise levels as root attrs, and samples.png beside it shows the grid.
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

from probe.data.loader import to_uint8

SAMPLES_H5, SAMPLES_PNG, GROUP = "samples.h5", "samples.png", "samples"


def write_samples(group: h5py.Group, images: torch.Tensor, seeds, sampler: str,
                  steps: int) -> None:
    group.create_dataset("images", data=images.numpy().astype(np.float32))
    group.create_dataset("uint8", data=to_uint8(images))
    group.create_dataset("seeds", data=np.asarray(seeds, np.int64))
    group.attrs["sampler"], group.attrs["steps"] = sampler, steps


def read_samples(file: h5py.File, group: str = GROUP) -> torch.Tensor | None:
    """The finished samples of an open file, or None."""
    if group in file and file[group].attrs.get("complete", False):
        return torch.from_numpy(file[f"{group}/images"][:])
    return None
