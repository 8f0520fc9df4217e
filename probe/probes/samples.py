"""`probe sample`: draw images from a run's denoiser, sample i from the noise of (seed, i).

Writes probes/<run-id>/samples.h5 (group `samples`: `images` float32 [n, C, H, W] in [-1, 1],
`uint8` [n, H, W, C], `seeds` [n, 2] = (seed, i); attrs: provenance, sampler, steps, sigmas) and
probes/<run-id>/samples.png. Because the noise is a function of (seed, i) alone, two runs
sampled with the same seed start from the same noise, whatever the batch size or device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from probe.artifacts import Artifacts
from probe.config import SAMPLER_CHOICES, SampleConfig, to_dict
from probe.data.loader import to_uint8
from probe.diffusion.samplers import sample_from_seeds, sampler_sigmas
from probe.errors import ProbeError
from probe.probes.common import ResumableH5
from probe.report.images import save_grid

SAMPLES_H5, SAMPLES_PNG = "samples.h5", "samples.png"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_sampling(sampler: str, steps: int, count: int, seed: int, batch: int) -> None:
    if sampler not in SAMPLER_CHOICES:
        raise ProbeError(f"--sampler must be one of {', '.join(SAMPLER_CHOICES)}, "
                         f"got {sampler!r}")
    for name, value in (("--steps", steps), ("--n", count), ("--batch", batch)):
        if value < 1:
            raise ProbeError(f"{name} must be at least 1, got {value}")
    if seed < 0:
        raise ProbeError(f"--seed must be >= 0, got {seed}")


def sample_seeds(seed: int, count: int) -> list[tuple[int, int]]:
    return [(seed, i) for i in range(count)]


def generate(denoiser, seeds, sampler: str, steps: int, batch: int = 64, dev=None,
             log=None) -> torch.Tensor:
    """Samples [len(seeds), C, H, W] on the CPU, drawn `batch` at a time on `dev`."""
    dev = dev or device()
    denoiser = denoiser.to(dev)
    out = []
    for lo in range(0, len(seeds), batch):
        out.append(sample_from_seeds(denoiser, seeds[lo: lo + batch], sampler, steps,
                                     device=dev).float().cpu())
        if log:
            log(f"  sampled {min(lo + batch, len(seeds))}/{len(seeds)}")
    return torch.cat(out)


def sample_run(run, cfg: SampleConfig, store: Artifacts, command: str = "", log=None
               ) -> tuple[Path, Path]:
    """Sample `run` (a loaded Run) as `cfg` says; returns the HDF5 and PNG paths."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_sampling(cfg.sampler, cfg.steps, cfg.n, cfg.seed, cfg.batch)
    directory = store.probe_dir(run.run_id)
    h5_path, png_path = directory / SAMPLES_H5, directory / SAMPLES_PNG
    sigmas = sampler_sigmas(cfg.sampler, run.denoiser, cfg.steps).tolist()
    settings = {k: v for k, v in to_dict(cfg).items() if k != "batch"}  # batch changes nothing
    attrs = {**run.provenance(), "command": command, "config": settings, "sigmas": sigmas}
    identity = {"checkpoint_sha256": run.checkpoint_sha256, **settings}
    with ResumableH5(h5_path, attrs, identity) as out:
        if not out.done("samples"):
            seeds = sample_seeds(cfg.seed, cfg.n)
            log(f"{run.run_id}: {cfg.n} samples, {cfg.sampler}"
                + ("" if cfg.sampler == "kadkhodaie" else f" {cfg.steps} steps"))
            images = generate(run.denoiser, seeds, cfg.sampler, cfg.steps, cfg.batch, log=log)
            write_samples(out.begin("samples"), images, seeds, cfg.sampler, cfg.steps)
            out.complete(out.file["samples"])
        images = torch.from_numpy(out.file["samples/images"][:])
    save_grid(png_path, to_uint8(images))
    return h5_path, png_path


def write_samples(group, images: torch.Tensor, seeds, sampler: str, steps: int) -> None:
    group.create_dataset("images", data=images.numpy().astype(np.float32))
    group.create_dataset("uint8", data=to_uint8(images))
    group.create_dataset("seeds", data=np.asarray(seeds, np.int64))
    group.attrs["sampler"], group.attrs["steps"] = sampler, steps
