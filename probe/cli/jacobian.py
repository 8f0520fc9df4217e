"""`probe jacobian-basis`: Jacobian eigenbases of denoisers -> HDF5, GAHB metrics, figures."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, dry_run_option, print_config
from probe.config import JACOBIAN_METHODS, PROBE_SOURCES, JacobianConfig

_J = JacobianConfig()


@cli.command("jacobian-basis")
@click.argument("runs", nargs=-1, required=True)
@click.option("--sigmas", default=",".join(f"{s:g}" for s in _J.sigmas),
              help="Comma-separated noise levels (data in [-1, 1]).")
@click.option("--images", type=click.IntRange(1), default=_J.images,
              help="Fixed, seeded probe images per run.")
@click.option("--from", "source", type=click.Choice(PROBE_SOURCES), default=_J.source,
              help="Probe images from the held-out set or the run's own training subset.")
@click.option("--method", type=click.Choice(JACOBIAN_METHODS), default=_J.method,
              help="full: the whole d x d Jacobian; lanczos: matrix-free top-k (Lanczos); "
                   "auto: full when d is small enough.")
@click.option("--k", type=click.IntRange(1), default=_J.k,
              help="Eigen- and singular vectors kept (must be below d).")
@click.option("--seed", type=int, default=_J.seed, help="Image choice and noise seed.")
@click.option("--probes", type=click.IntRange(1), default=_J.probes,
              help="lanczos: Hutchinson probe vectors for trace and asymmetry (deflated).")
@click.option("--tol", type=click.FloatRange(0), default=_J.tol,
              help="lanczos: stop once every top-k Ritz residual is below tol x |eigenvalue| "
                   "(each eigenvalue is then within tol, relative).")
@click.option("--figures/--no-figures", default=True, help="Draw figures/jacobian/*.png.")
@dry_run_option
@click.pass_obj
def jacobian_basis(store, runs, sigmas, images, source, method, k, seed, probes, tol, figures,
                   dry_run):
    """Eigen- and singular bases of each run's Jacobian at fixed noisy images.

    Writes probes/<run-id>/jacobian.h5 (resumable), upserts tables/basis.{parquet,csv} and draws
    figures/jacobian/. Basis agreement is computed automatically for pairs among the given runs:
    same data, N and architecture with splits a and b (agreement_split), and same data, N and
    split with different architectures (agreement_arch).
    """
    from probe.metrics.basis import pairs
    from probe.probes.common import parse_sigmas
    from probe.probes.jacobian import plan, run_jacobian_basis, validate
    from probe.runs import load_run

    cfg = JacobianConfig(sigmas=parse_sigmas(sigmas), images=images, source=source,
                         method=method, k=k, seed=seed, probes=probes, tol=tol)
    validate(cfg)
    loaded = [load_run(r, store) for r in runs]
    plans = [plan(run, cfg) for run in loaded]  # bad k / memory: one line, before any work
    if dry_run:
        print_config(cfg)
        for p in plans:
            click.echo(f"run {p['run']}: d = {p['d']}, method = {p['method']}, "
                       f"images = {p['images']}")
        for metric, a, b in pairs(loaded):
            click.echo(f"pair {metric}: {a.run_id} ~ {b.run_id}")
        return
    out = run_jacobian_basis(loaded, store, cfg, command=command_line(), figures=figures)
    for path in out["probes"]:
        click.echo(f"probe: {path}")
    click.echo(f"table: {out['table']}")
    for path in out["figures"]:
        click.echo(f"figure: {path}")
