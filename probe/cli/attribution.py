"""`probe attribution`: receptive fields, head importance and training-image influence (captum)."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, dry_run_option, print_config
from probe.config import ATTRIBUTION_METHODS, AttributionConfig
from probe.config import PROBE_SOURCES as SOURCES

_A = AttributionConfig()


@cli.command("attribution")
@click.argument("runs", nargs=-1, required=True)
@click.option("--sigmas", default=",".join(f"{s:g}" for s in _A.sigmas),
              help="Comma-separated noise levels (data scaled to [-1, 1]).")
@click.option("--images", type=click.IntRange(1), default=_A.images,
              help="Fixed, seeded probe images per run.")
@click.option("--from", "source", type=click.Choice(SOURCES), default=_A.source,
              help="Held-out images or the run's own training images.")
@click.option("--seed", type=int, default=_A.seed, help="Image choice and noise seed.")
@click.option("--pixels", multiple=True, default=_A.pixels,
              help="Output pixels: center, grid (3x3 cell centres) or x,y (column, row); "
                   "several separated by spaces or by repeating the option.")
@click.option("--method", type=click.Choice(ATTRIBUTION_METHODS), default=_A.method,
              help="captum Saliency (Jacobian rows) or IntegratedGradients from the zero image.")
@click.option("--ig-steps", type=click.IntRange(1), default=_A.ig_steps,
              help="Integrated gradients: points on the path.")
@click.option("--batch", type=click.IntRange(1), default=_A.batch,
              help="Images per forward pass.")
@click.option("--heads", is_flag=True,
              help="Head importance: loss increase when one head's output is removed.")
@click.option("--influence", is_flag=True,
              help="Training-image influence of generated samples (TracInCP over the "
                   "checkpoints kept by `train-split --keep-checkpoints`).")
@click.option("--samples", type=click.IntRange(1), default=_A.samples,
              help="Influence: generated samples to explain.")
@click.option("--sample-steps", type=click.IntRange(1), default=_A.sample_steps,
              help="Influence: sampler steps.")
@click.option("--influence-sigma", type=click.FloatRange(0, min_open=True),
              default=_A.influence_sigma, help="Influence: noise level of the denoising loss.")
@click.option("--figures/--no-figures", default=True, help="Draw the figures.")
@dry_run_option
@click.pass_obj
def attribution(store, runs, sigmas, images, source, seed, pixels, method, ig_steps, batch,
                heads, influence, samples, sample_steps, influence_sigma, figures, dry_run):
    """captum attributions of RUN(s) -> probes/<run>/attribution.h5, tables and figures."""
    from probe.probes.attribution import plan, run_attribution, validate
    from probe.probes.common import parse_sigmas
    from probe.runs import load_run

    cfg = AttributionConfig(sigmas=parse_sigmas(sigmas), images=images, source=source,
                            seed=seed, pixels=tuple(pixels), method=method, ig_steps=ig_steps,
                            batch=batch, heads=heads, influence=influence, samples=samples,
                            sample_steps=sample_steps, influence_sigma=influence_sigma)
    validate(cfg)
    loaded = [load_run(run, store) for run in runs]
    plans = [plan(run, cfg) for run in loaded]  # bad pixels, missing checkpoints: before work
    if dry_run:
        for p in plans:
            labels = " ".join(f"{x},{y}" for y, x in p["pixels"])
            click.echo(f"run: {p['run']}  pixels (x,y): {labels}  images: {p['images']}")
        print_config(cfg)
        return
    result = run_attribution(loaded, store, cfg, command=command_line(), figures=figures,
                             log=click.echo)
    _summary(result["table"], [r.run_id for r in loaded])
    for path in result["figures"]:
        click.echo(f"figure: {path}")


def _summary(table_path, run_ids) -> None:
    import pandas as pd

    df = pd.read_parquet(table_path)
    df = df[df["run"].isin(run_ids)]
    rf = df[df["pixel"] == "all"]
    if len(rf):
        wide = rf.pivot_table(index=["run", "n", "sigma"], columns="metric", values="value")
        click.echo(wide.reset_index().to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    heads = df[df["metric"] == "head_importance"]
    for run, g in heads.groupby("run"):
        top = g.loc[g["value"].idxmax()]
        click.echo(f"{run}: most important head: layer {top['layer']} head {top['head']} "
                   f"(sigma {top['sigma']:g}, loss +{top['value']:.4g})")
    infl = df[df["metric"].str.startswith("influence_") | (df["metric"] == "memorized_fraction")]
    for run, g in infl.groupby("run"):
        values = ", ".join(f"{m} {v:.3g}" for m, v in zip(g["metric"], g["value"]))
        click.echo(f"{run}: {values}")
