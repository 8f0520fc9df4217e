"""`probe attention-locality`: attention maps to HDF5, locality tables, figures."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, data_options, dry_run_option, print_config
from probe.config import ATTENTION_STORES, AttentionConfig
from probe.config import PROBE_SOURCES as SOURCES

_A = AttentionConfig()


@cli.command("attention-locality")
@click.argument("runs", nargs=-1)
@click.option("--sigmas", default=",".join(f"{s:g}" for s in _A.sigmas),
              help="Comma-separated noise levels (data scaled to [-1, 1]).")
@click.option("--images", type=click.IntRange(1), default=_A.images,
              help="Fixed, seeded images per run.")
@click.option("--from", "source", type=click.Choice(SOURCES), default=_A.source,
              help="Held-out images or the run's own training images.")
@click.option("--queries", multiple=True, default=_A.queries,
              help="Query tokens drawn in the map figures: center or y,x on the finest token "
                   "grid; several separated by ';' or by repeating the option.")
@click.option("--store", "store_", type=click.Choice(ATTENTION_STORES), default=_A.store,
              help="Keep every head's maps, their mean over heads, or none (metrics only).")
@click.option("--max-gb", type=click.FloatRange(0, min_open=True), default=_A.max_gb,
              help="Refuse to write more maps than this (uncompressed GB).")
@click.option("--seed", type=int, default=_A.seed, help="Image choice and noise seed.")
@click.option("--diffusers", "diffusers", multiple=True, type=click.Path(),
              help="A local diffusers DiTTransformer2DModel or UNet2DModel folder "
                   "(save_pretrained) to probe on the data set given by --dataset etc.")
@data_options
@click.option("--figures/--no-figures", default=True, help="Draw the figures.")
@dry_run_option
@click.pass_obj
def attention_locality(store, runs, sigmas, images, source, queries, store_, max_gb, seed,
                       diffusers, data_config, figures, dry_run):
    """Attention maps of RUN(s) -> probes/<run>/attention.h5, locality tables and figures."""
    from probe.metrics.locality import summary
    from probe.probes.attention import parse_queries, run_attention_locality, validate
    from probe.probes.common import parse_sigmas
    from probe.runs import find_run_dir

    cfg = AttentionConfig(sigmas=parse_sigmas(sigmas), images=images, source=source,
                          seed=seed, store=store_, max_gb=max_gb,
                          queries=parse_queries(queries))
    validate(cfg)
    if not runs and not diffusers:
        raise click.UsageError("give at least one RUN or --diffusers PATH")
    for run in runs:
        find_run_dir(run, store)
    if dry_run:
        click.echo("runs: " + ", ".join([*runs, *diffusers]))
        print_config(cfg)
        if diffusers:
            print_config(data_config)
        return
    table = run_attention_locality(runs, store, cfg, diffusers=diffusers,
                                   data_config=data_config if diffusers else None,
                                   command=command_line(), figures=figures, log=click.echo)
    click.echo(summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
