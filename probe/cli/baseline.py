"""`probe baseline KIND` (an analytic denoiser as a run directory) and `probe compare RUN --to
...` (a trained model against analytic denoisers of its own training subset)."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import (
    Sigmas,
    command_line,
    data_options,
    dry_run_option,
    echo_err,
    print_config,
    probe_options,
    run_probe_command,
)
from probe.config import (
    BASELINE_KINDS,
    BOUNDARIES,
    COMPARE_THEORIES,
    SAMPLER_CHOICES,
    BaselineConfig,
    CompareConfig,
    SubsetConfig,
)
from probe.errors import ProbeError

_B, _C = BaselineConfig(), CompareConfig()


def _patches(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"must be comma-separated odd integers, got {text!r}") from None


@cli.command("baseline")
@click.argument("kind", type=click.Choice(BASELINE_KINDS))
@click.option("--from", "source", default=None, metavar="RUN",
              help="Build it on this run's training subset (a run directory or id).")
@data_options
@click.option("--n", type=click.IntRange(1), default=None,
              help="Without --from: the training-subset size (as `train-split --n`).")
@click.option("--split", type=click.Choice(["a", "b"]), default="a",
              help="Without --from: the subset split.")
@click.option("--patch", type=click.IntRange(1), default=_B.patch,
              help="ls/els: the odd P x P neighbourhood (at most the image size).")
@click.option("--boundary", type=click.Choice(BOUNDARIES), default=_B.boundary,
              help="ls/els: zero padding (as conv nets) or periodic.")
@click.option("--stationary", is_flag=True, help="wiener: circulant (Fourier-diagonal) "
                                                 "covariance instead of the full one.")
@click.option("--chunk", type=click.IntRange(0), default=_B.chunk,
              help="Stream training images from disk this many at a time (0: in memory).")
@click.option("--calibrate", is_flag=True,
              help="ls/els with --from a trained run: the patch per sigma that best matches "
                   "that model (Kamb & Ganguli's calibration).")
@click.option("--sigmas", type=Sigmas(), default=_C.sigmas,
              help="--calibrate: the noise levels calibrated.")
@click.option("--patches", default=",".join(map(str, _C.patches)), show_default=True,
              help="--calibrate: candidate patch sizes.")
@dry_run_option
@click.pass_obj
def baseline(store, kind, source, data_config, n, split, patch, boundary, stationary, chunk,
             calibrate, sigmas, patches, dry_run):
    """An analytic denoiser (ideal, wiener, ls, els) as a run directory without weights.

    Writes runs/<id>/ (config.json, subset.json, and for wiener its statistics) and prints
    `run: PATH`; every probe and sampler takes that directory like a trained run.
    """
    from probe.baselines.run import validate, write_baseline_run

    cfg = BaselineConfig(kind=kind, patch=patch, boundary=boundary, stationary=stationary,
                         chunk=chunk)
    if calibrate and kind not in ("ls", "els"):
        raise ProbeError("--calibrate is for ls and els only")
    if calibrate and source is None:
        raise ProbeError("--calibrate needs --from RUN: the model to match")
    if source is not None:
        from probe.runs import load_run

        run = load_run(source, store)
        if len(run.train_indices) == 0 or not hasattr(run, "prepared"):
            raise ProbeError(f"{run.run_id} has no training subset here to build {kind} on")
        prepared, rows, n, split, source_id = (run.prepared, run.train_indices, run.n,
                                               run.split, run.run_id)
    else:
        if n is None:
            raise ProbeError("give --from RUN, or the data options with --n (and --split)")
        from probe.data.prepare import prepare
        from probe.data.subsets import subset_indices, write_subsets

        prepared = prepare(data_config, store, command_line())
        _, doc = write_subsets(prepared, SubsetConfig(ns=(n,)))
        rows, source_id = subset_indices(doc, split, n), ""
        if len(rows) != n:
            raise ProbeError(f"N={n} is not available in split {split}")
    m = prepared.manifest
    validate(cfg, (int(m["channels"]), int(m["size"]), int(m["size"])))
    if calibrate:
        cfg = _calibrated(cfg, run, sigmas, _patches(patches))
    if dry_run:
        click.echo(f"baseline: {kind} on N={n} split {split} of {prepared.directory.name}"
                   + (f" (from {source_id})" if source_id else ""))
        print_config(cfg)
        return
    path = write_baseline_run(store, cfg, prepared, rows, n, split, source_id, command_line())
    click.echo(f"run: {path}")


def _calibrated(cfg: BaselineConfig, run, sigmas, patches) -> BaselineConfig:
    import dataclasses

    from probe.baselines.run import training_images
    from probe.probes.calibration import calibrate
    from probe.probes.common import probe_indices

    rows = probe_indices(run, _C.calibration_images, "train", _C.seed)
    echo_err(f"{run.run_id}: calibrating the {cfg.kind} patch against the model")
    schedule, _ = calibrate(run.denoiser, training_images(run.prepared, run.train_indices,
                                                          cfg.chunk),
                            run.images(rows), rows, sigmas, patches, cfg.kind == "els",
                            cfg.boundary, _C.seed, echo_err)
    return dataclasses.replace(cfg, schedule=tuple(zip(schedule.sigmas, schedule.patches)))


@cli.command("compare")
@probe_options(_C, source=False, models=False)
@click.option("--to", "theories", default=",".join(_C.theories), show_default=True,
              help="Comma-separated theories (ideal, wiener, ls, els: built from each RUN's "
                   "training subset) or run directories / ids of the same data.")
@click.option("--samples", type=click.IntRange(1), default=_C.samples,
              help="Trajectories per run, sample i from the noise of (seed, i).")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=_C.sampler,
              help="The model's sampler; theories walk the model's noise levels with it.")
@click.option("--steps", type=click.IntRange(1), default=_C.steps)
@click.option("--batch", type=click.IntRange(1), default=_C.batch)
@click.option("--patch", type=click.IntRange(0), default=_C.patch,
              help="ls/els patch size; 0: calibrated per sigma against the model.")
@click.option("--patches", default=",".join(map(str, _C.patches)), show_default=True,
              help="Calibration candidates (those that fit the image are tried).")
@click.option("--boundary", type=click.Choice(BOUNDARIES), default=_C.boundary)
@click.option("--stationary", is_flag=True, help="wiener: the stationary (circulant) variant.")
@click.option("--chunk", type=click.IntRange(0), default=_C.chunk,
              help="Stream training images from disk this many at a time (0: in memory).")
@click.pass_obj
def compare(store, runs, last, sigmas, images, seed, figures, dry_run, theories, samples,
            sampler, steps, batch, patch, patches, boundary, stationary, chunk):
    """How close each RUN is to analytic denoisers: one-step r^2 / cosine per sigma and
    trajectory r^2 from the same noise (Kamb & Ganguli's Table 1 metric).

    Writes probes/<run-id>/compare.h5, upserts tables/compare and draws figures/compare/.
    """
    from probe.metrics.compare import text_report
    from probe.runs import find_run_dir

    refs = []
    for item in (t.strip() for t in theories.split(",")):
        if item:
            refs.append(item if item in COMPARE_THEORIES else
                        str(find_run_dir(item, store).resolve()))
    cfg = CompareConfig(theories=tuple(refs), sigmas=sigmas, images=images, samples=samples,
                        sampler=sampler, steps=steps, seed=seed, batch=batch, patch=patch,
                        patches=_patches(patches), boundary=boundary, stationary=stationary,
                        chunk=chunk)
    result = run_probe_command("compare", store, runs, cfg, last=last, dry_run=dry_run,
                               figures=figures,
                               describe=lambda p: "theories: " + ", ".join(k for k, _ in
                                                                           p.theories))
    if result is not None:
        click.echo(text_report(result.table))
