"""`probe sample`: draw images from a run's denoiser, sample i from the noise of (seed, i).

Writes probes/<run-id>/samples.h5 (layout: probe.formats.samples); the grid PNG beside it is
drawn by probe.report from that file. Because the noise is a function of (seed, i) alone, two
runs sampled with the same seed start from the same noise, whatever the batch size or device.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from probe import artifacts
from probe.config import SAMPLER_CHOICES, SampleConfig, to_dict
from probe.diffusion.samplers import sample_from_seeds, sampler_sigmas
from probe.errors import ProbeError
from probe.formats.h5 import ResumableH5
from probe.formats.samples import GROUP, write_samples


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


def sample_run(run, cfg: SampleConfig, path: Path, command: str = "", log=None) -> Path:
    """Sample `run` as `cfg` says into the samples.h5 at `path`."""
    sigmas = sampler_sigmas(cfg.sampler, run.denoiser, cfg.steps).tolist()
    settings = {k: v for k, v in to_dict(cfg).items() if k != "batch"}  # batch changes nothing
    attrs = {**run.provenance(), "command": command, "config": settings, "sigmas": sigmas}
    identity = {"checkpoint_sha256": run.checkpoint_sha256, **settings}
    with ResumableH5(path, attrs, identity) as out:
        if not out.done(GROUP):
            seeds = sample_seeds(cfg.seed, cfg.n)
            if log:
                log(f"{run.run_id}: {cfg.n} samples, {cfg.sampler}"
                    + ("" if cfg.sampler == "kadkhodaie" else f" {cfg.steps} steps"))
            images = generate(run.denoiser, seeds, cfg.sampler, cfg.steps, cfg.batch, log=log)
            write_samples(out.begin(GROUP), images, seeds, cfg.sampler, cfg.steps)
            out.complete(out.file[GROUP])
    return path


class Sample:
    """The sample probe (protocol: probe.probes.protocol). It has no table."""

    name = "sample"
    filename = artifacts.SAMPLES_H5
    table = ""

    def validate(self, cfg: SampleConfig) -> None:
        check_sampling(cfg.sampler, cfg.steps, cfg.n, cfg.seed, cfg.batch)

    def training_images(self, cfg: SampleConfig) -> str:
        return ""

    def plan(self, runs, cfg: SampleConfig, paths, log) -> list[None]:
        return [None] * len(runs)

    def probe(self, run, plan, cfg: SampleConfig, path: Path, command: str, log) -> None:
        sample_run(run, cfg, path, command, log)

    def tidy(self, runs, paths: list[Path], cfg: SampleConfig) -> pd.DataFrame:
        return pd.DataFrame()


PROBE = Sample()
