"""`probe attribution`: receptive fields, head importance and training-image influence (captum)."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import probe_options, run_probe_command
from probe.config import ATTRIBUTION_METHODS, AttributionConfig

_A = AttributionConfig()


@cli.command("attribution")
@probe_options(_A)
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
                   "checkpoints kept by `train-split --keep-checkpoints`; needs the training "
                   "images, so not on --model models).")
@click.option("--samples", type=click.IntRange(1), default=_A.samples,
              help="Influence: generated samples to explain.")
@click.option("--sample-steps", type=click.IntRange(1), default=_A.sample_steps,
              help="Influence: sampler steps.")
@click.option("--influence-sigma", type=click.FloatRange(0, min_open=True),
              default=_A.influence_sigma, help="Influence: noise level of the denoising loss.")
@click.pass_obj
def attribution(store, runs, last, sigmas, images, source, seed, figures, dry_run, models,
                data_config, pixels, method, ig_steps, batch, heads, influence, samples,
                sample_steps, influence_sigma):
    """captum attributions of RUN(s) -> probes/<run>/attribution.h5, tables and figures.

    With no RUN, every finished run under the artifacts root (--last: those of the latest
    train-split)."""
    cfg = AttributionConfig(sigmas=sigmas, images=images, source=source, seed=seed,
                            pixels=tuple(pixels), method=method, ig_steps=ig_steps,
                            batch=batch, heads=heads, influence=influence, samples=samples,
                            sample_steps=sample_steps, influence_sigma=influence_sigma)

    def describe(p):
        return "pixels (x,y): " + " ".join(f"{x},{y}" for y, x in p["pixels"]) + \
            f"  images: {p['images']}"

    result = run_probe_command("attribution", store, runs, cfg, last=last, models=models,
                               data_config=data_config, dry_run=dry_run, figures=figures,
                               describe=describe)
    if result is not None:
        _summary(result.table)


def _summary(df) -> None:
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
