"""`probe generalization [RUN ...]`: PSNR gap, memorization, reproducibility, FID."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import probe_options, run_probe_command
from probe.config import SAMPLER_CHOICES, GeneralizationConfig

_G = GeneralizationConfig()


@cli.command("generalization")
@probe_options(_G, source=False)
@click.option("--pair", "pairs", nargs=2, multiple=True, metavar="RUN_A RUN_B",
              help="Compare these two runs' samples from the same noise (repeatable); runs "
                   "differing only in split a/b are paired by themselves.")
@click.option("--samples", type=click.IntRange(2), default=_G.samples,
              help="Samples per run (sample i from the noise of (seed, i)).")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=_G.sampler,
              help="How samples are drawn (see `probe sample --help`).")
@click.option("--steps", type=click.IntRange(1), default=_G.steps,
              help="Sampler steps (kadkhodaie runs until its noise estimate < sigma_inf).")
@click.option("--batch", type=click.IntRange(1), default=_G.batch)
@click.option("--mean-removed", is_flag=True,
              help="Nearest neighbours and cosines after removing each image's mean.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=_G.threshold,
              help="Same-noise pairs count as reproducible above this cosine similarity.")
@click.option("--fid-weights", type=click.Path(dir_okay=False), default=None,
              help="FID Inception weights (pt_inception-2015-12-05 .pth), a TorchScript "
                   "feature extractor, or a `probe fid-digits` network; without it "
                   "FID/KID/precision/recall are skipped.")
@click.pass_obj
def generalization(store, runs, last, sigmas, images, seed, figures, dry_run, models,
                   data_config, pairs, samples, sampler, steps, batch, mean_removed, threshold,
                   fid_weights):
    """Did each RUN generalize? Writes probes/<run-id>/generalization.h5 and tidy tables.

    With no RUN and no --pair, every finished run under the artifacts root (--last: those of
    the latest train-split). Every metric here but the same-noise reproducibility needs the
    model's training images, so an outside --model is refused with a line saying so unless
    --train-data names them.
    """
    from probe.metrics.generalization import text_report
    from probe.runs import find_run_dir

    pair_ids = tuple((find_run_dir(a, store).name, find_run_dir(b, store).name)
                     for a, b in pairs)
    refs = [*runs, *(r for pair in pairs for r in pair)]
    cfg = GeneralizationConfig(sigmas=sigmas, images=images, samples=samples, sampler=sampler,
                               steps=steps, seed=seed, batch=batch, mean_removed=mean_removed,
                               threshold=threshold, fid_weights=fid_weights, pairs=pair_ids)
    result = run_probe_command(
        "generalization", store, refs, cfg, last=last, models=models,
        data_config=data_config, dry_run=dry_run, figures=figures,
        describe=lambda p: "pairs: " + (", ".join(r.run_id for r in p.partners) or "none"))
    if result is not None:
        click.echo(text_report(result.table))
