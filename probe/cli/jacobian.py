"""`probe jacobian-basis`: Jacobian eigenbases of denoisers -> HDF5, GAHB metrics, figures."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import probe_options, run_probe_command
from probe.config import JACOBIAN_METHODS, JacobianConfig

_J = JacobianConfig()


@cli.command("jacobian-basis")
@probe_options(_J)
@click.option("--method", type=click.Choice(JACOBIAN_METHODS), default=_J.method,
              help="full: the whole d x d Jacobian; lanczos: matrix-free top-k (Lanczos); "
                   "auto: full when d is small enough.")
@click.option("--k", type=click.IntRange(1), default=_J.k,
              help="Eigen- and singular vectors kept (must be below d).")
@click.option("--probes", type=click.IntRange(1), default=_J.probes,
              help="lanczos: Hutchinson probe vectors for trace and asymmetry (deflated).")
@click.option("--tol", type=click.FloatRange(0), default=_J.tol,
              help="lanczos: stop once every top-k Ritz residual is below tol x |eigenvalue| "
                   "(each eigenvalue is then within tol, relative).")
@click.pass_obj
def jacobian_basis(store, runs, last, sigmas, images, source, seed, figures, dry_run,
                   models, data_config, method, k, probes, tol):
    """Eigen- and singular bases of each run's Jacobian at fixed noisy images.

    Writes probes/<run-id>/jacobian.h5 (resumable), upserts tables/basis.{parquet,csv} and draws
    figures/jacobian/. With no RUN, every finished run under the artifacts root (--last: those
    of the latest train-split). Basis agreement is computed for pairs among the runs: same
    data, N and architecture with splits a and b (agreement_split), and same data, N and split
    with different architectures (agreement_arch). The memorization signature needs training
    images: NaN for a --model without --train-data.
    """
    cfg = JacobianConfig(sigmas=sigmas, images=images, source=source, method=method, k=k,
                         seed=seed, probes=probes, tol=tol)
    from probe.metrics.basis import pairs

    run_probe_command("jacobian-basis", store, runs, cfg, last=last, models=models,
                      data_config=data_config, dry_run=dry_run, figures=figures,
                      describe=lambda p: f"d = {p['d']}, method = {p['method']}, "
                                         f"images = {p['images']}",
                      describe_runs=lambda loaded: [f"pair {metric}: {a.run_id} ~ {b.run_id}"
                                                    for metric, a, b in pairs(loaded)])
