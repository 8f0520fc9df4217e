"""`probe attention-locality`: attention maps to HDF5, locality tables, figures."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import probe_options, run_probe_command
from probe.config import ATTENTION_MAPS, AttentionConfig

_A = AttentionConfig()


@cli.command("attention-locality")
@probe_options(_A)
@click.option("--queries", multiple=True, default=_A.queries,
              help="Query tokens drawn in the map figures: center or y,x on the finest token "
                   "grid; several separated by ';' or by repeating the option.")
@click.option("--maps", "--store", "maps", type=click.Choice(ATTENTION_MAPS), default=_A.maps,
              help="Keep every head's maps, their mean over heads, or none (metrics only).")
@click.option("--max-gb", type=click.FloatRange(0, min_open=True), default=_A.max_gb,
              help="Refuse to write more maps than this (uncompressed GB).")
@click.pass_obj
def attention_locality(store, runs, last, sigmas, images, source, seed, figures, dry_run,
                       models, data_config, queries, maps, max_gb):
    """Attention maps of RUN(s) -> probes/<run>/attention.h5, locality tables and figures.

    With no RUN, every finished run under the artifacts root (--last: those of the latest
    train-split). The Spearman correlation of locality with the PSNR gap is a cross-probe
    table: `probe report` builds it (tables/locality_gap).
    """
    from probe.metrics.locality import summary
    from probe.probes.attention import parse_queries

    cfg = AttentionConfig(sigmas=sigmas, images=images, source=source, seed=seed, maps=maps,
                          max_gb=max_gb, queries=parse_queries(queries))
    result = run_probe_command(
        "attention-locality", store, runs, cfg, last=last, models=models,
        data_config=data_config, dry_run=dry_run, figures=figures,
        describe=lambda p: f"layers: {len(p.layers)}, images: {len(p.indices)}")
    if result is not None:
        click.echo(summary(result.table).to_string(index=False,
                                                   float_format=lambda v: f"{v:.3f}"))
