"""`probe generalization RUN [RUN ...]`: PSNR gap, memorization, reproducibility, FID."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, dry_run_option, print_config
from probe.config import SAMPLER_CHOICES, GeneralizationConfig

_G = GeneralizationConfig()


@cli.command("generalization")
@click.argument("runs", nargs=-1)
@click.option("--pair", "pairs", nargs=2, multiple=True, metavar="RUN_A RUN_B",
              help="Compare these two runs' samples from the same noise (repeatable); runs "
                   "differing only in split a/b are paired by themselves.")
@click.option("--sigmas", default=",".join(f"{s:g}" for s in _G.sigmas),
              help="Noise levels of the PSNR curves, comma-separated, on the [-1, 1] scale.")
@click.option("--images", type=click.IntRange(1), default=_G.images,
              help="Fixed images per source (training subset, held-out set) for PSNR.")
@click.option("--samples", type=click.IntRange(2), default=_G.samples,
              help="Samples per run (sample i from the noise of (seed, i)).")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=_G.sampler,
              help="How samples are drawn (see `probe sample --help`).")
@click.option("--steps", type=click.IntRange(1), default=_G.steps,
              help="Sampler steps (kadkhodaie runs until its noise estimate < sigma_inf).")
@click.option("--seed", type=click.IntRange(0), default=_G.seed,
              help="Seeds the image choice, the PSNR noise and the samples.")
@click.option("--batch", type=click.IntRange(1), default=_G.batch)
@click.option("--mean-removed", is_flag=True,
              help="Nearest neighbours and cosines after removing each image's mean.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=_G.threshold,
              help="Same-noise pairs count as reproducible above this cosine similarity.")
@click.option("--fid-weights", type=click.Path(dir_okay=False), default=None,
              help="FID Inception weights (pt_inception-2015-12-05 .pth) or a TorchScript "
                   "feature extractor; without it FID/KID/precision/recall are skipped.")
@click.option("--figures/--no-figures", default=True, help="Draw the figures afterwards.")
@dry_run_option
@click.pass_obj
def generalization(store, runs, pairs, sigmas, images, samples, sampler, steps, seed, batch,
                   mean_removed, threshold, fid_weights, figures, dry_run):
    """Did each RUN generalize? Writes probes/<run-id>/generalization.h5 and tidy tables."""
    from probe.probes.common import parse_sigmas
    from probe.probes.generalization import check_config, run_generalization, text_report

    if not runs and not pairs:
        raise click.UsageError("give at least one RUN or --pair RUN_A RUN_B")
    cfg = check_config(GeneralizationConfig(
        sigmas=parse_sigmas(sigmas), images=images, samples=samples, sampler=sampler,
        steps=steps, seed=seed, batch=batch, mean_removed=mean_removed, threshold=threshold,
        fid_weights=fid_weights))
    if dry_run:
        from probe.probes.generalization import resolve_pairs
        from probe.runs import load_run

        loaded = {str(r): load_run(r, store) for r in {*runs, *(r for p in pairs for r in p)}}
        explicit = [(loaded[a], loaded[b]) for a, b in pairs]
        for run in loaded.values():
            click.echo(f"run: {run.directory}")
        for a, b in resolve_pairs(list(loaded.values()), explicit, click.echo):
            click.echo(f"pair: {a.run_id} <-> {b.run_id}")
        print_config(cfg)
        return
    table = run_generalization(runs, store, cfg, pairs, command_line())
    click.echo(text_report(table))
    if figures:
        from probe.report.generalization_figures import draw_all

        for path in draw_all(store, sorted(set(table.run))):
            click.echo(f"figure: {path}")
