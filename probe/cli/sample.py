"""`probe sample [RUN ...]`: images from a run's denoiser, from per-sample seeded noise."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import probe_options, run_probe_command
from probe.config import SAMPLER_CHOICES, SampleConfig

_S = SampleConfig()


@cli.command("sample")
@probe_options(_S, source=False, images=False)
@click.option("--n", "n_samples", type=click.IntRange(1), default=_S.n,
              help="Number of samples.")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=_S.sampler,
              help="ddim (Euler on the probability-flow ODE), ddpm (ancestral), heun (EDM), "
                   "kadkhodaie (stochastic coarse-to-fine ascent).")
@click.option("--steps", type=click.IntRange(1), default=_S.steps,
              help="Denoiser steps (kadkhodaie runs until its noise estimate < sigma_inf).")
@click.option("--batch", type=click.IntRange(1), default=_S.batch, help="Samples per batch.")
@click.pass_obj
def sample(store, runs, last, seed, figures, dry_run, models, data_config, n_samples,
           sampler, steps, batch):
    """Sample RUN(s); writes probes/<run-id>/samples.h5 and samples.png. Sample i starts from
    the noise of (--seed, i): same seed, same noise, whatever the model.

    With no RUN, every finished run under the artifacts root (--last: those of the latest
    train-split)."""
    cfg = SampleConfig(n=n_samples, sampler=sampler, steps=steps, seed=seed, batch=batch)
    run_probe_command("sample", store, runs, cfg, last=last, models=models,
                      data_config=data_config, dry_run=dry_run, figures=figures)
