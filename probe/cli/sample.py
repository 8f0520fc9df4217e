"""`probe sample RUN`: images from a run's denoiser, from per-sample seeded noise."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, dry_run_option, print_config
from probe.config import SAMPLER_CHOICES, SampleConfig

_S = SampleConfig()


@cli.command("sample")
@click.argument("run")
@click.option("--n", "count", type=click.IntRange(1), default=_S.n, help="Number of samples.")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=_S.sampler,
              help="ddim (Euler on the probability-flow ODE), ddpm (ancestral), heun (EDM), "
                   "kadkhodaie (stochastic coarse-to-fine ascent).")
@click.option("--steps", type=click.IntRange(1), default=_S.steps,
              help="Denoiser steps (kadkhodaie runs until its noise estimate < sigma_inf).")
@click.option("--seed", type=click.IntRange(0), default=_S.seed,
              help="Sample i starts from the noise of (seed, i): same seed, same noise.")
@click.option("--batch", type=click.IntRange(1), default=_S.batch, help="Samples per batch.")
@dry_run_option
@click.pass_obj
def sample(store, run, count, sampler, steps, seed, batch, dry_run):
    """Sample RUN; writes probes/<run-id>/samples.h5 and samples.png."""
    from probe.probes.samples import sample_run
    from probe.runs import load_run

    cfg = SampleConfig(n=count, sampler=sampler, steps=steps, seed=seed, batch=batch)
    loaded = load_run(run, store)
    if dry_run:
        click.echo(f"run: {loaded.directory}")
        print_config(cfg)
        return
    h5, png = sample_run(loaded, cfg, store, command_line())
    click.echo(f"samples: {h5}")
    click.echo(f"grid: {png}")
