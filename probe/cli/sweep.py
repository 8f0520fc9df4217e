"""`probe sweep FILE.toml` (run a grid), `probe sweep status | collect FILE.toml`."""

from __future__ import annotations

import click

from probe.cli import cli


class SweepGroup(click.Group):
    """`probe sweep FILE.toml ...` is `probe sweep run FILE.toml ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@cli.group("sweep", cls=SweepGroup)
def sweep_group() -> None:
    """Grids of train-split runs and their probes: a local pool, SLURM (submitit), or printed
    commands. `probe sweep FILE.toml` runs one (probe.sweep documents the file)."""


@sweep_group.command("run")
@click.argument("path", type=click.Path())
@click.option("--executor", type=click.Choice(["local", "slurm", "print"]), default="local",
              help="local: a process pool here; slurm: a job array through submitit; print: "
                   "one shell line per job for any other scheduler.")
@click.option("--jobs", type=click.IntRange(1), default=1, help="local: jobs at a time.")
@click.option("--threads-per-job", type=click.IntRange(1), default=None,
              help="Torch threads of each job (set before torch starts in it); default: "
                   "this machine's cores / --jobs (slurm: its cpus-per-task, default 1).")
@click.option("--gpus-per-job", type=click.IntRange(0), default=None,
              help="GPUs per run; 2 or more train it under torchrun (DDP, one rank per GPU).")
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--time", "time_", default=None, help="slurm: time limit (minutes or HH:MM:SS).")
@click.option("--mem", default=None, help="slurm: memory per job (16G).")
@click.option("--account", default=None, help="slurm: account.")
@click.option("--wait", "wait_", is_flag=True,
              help="slurm: wait until every job is done or failed, then print the status.")
@click.option("--dry-run", is_flag=True, help="List the jobs (run ids and grid values).")
@click.pass_obj
def run_cmd(store, path, executor, jobs, threads_per_job, gpus_per_job, partition, time_, mem,
            account, wait_, dry_run):
    """Run every job of a sweep that is not done yet (rerunning is always safe)."""
    from probe import sweep as sweeps
    from probe.errors import ProbeError

    sweep = sweeps.load(path, store)
    if dry_run:
        for job in sweep.jobs:
            click.echo(f"{job.run_id}  {sweeps._describe(dict(job.point))}")
        click.echo(f"{len(sweep.jobs)} jobs")
        return
    if executor == "local":
        gpus = gpus_per_job or 0
        threads = threads_per_job or max(1, sweeps.cores() // jobs)
        results = sweeps.run_local(store, sweep, jobs, threads, gpus, echo=click.echo)
        failed = [k for k, v in results.items() if v]
        rows = sweeps.status_table(store, sweep)
        click.echo(sweeps.format_status(rows))
        if failed:
            row = next(r for r in rows if r["job"] == failed[0])
            raise ProbeError(f"{len(failed)} of {len(results)} jobs failed; {failed[0]}: "
                             f"{row['error'] or 'see ' + row['log']}")
    elif executor == "print":
        for line in sweeps.print_commands(store, sweep, threads_per_job or 0, gpus_per_job or 0):
            click.echo(line)
    else:
        given = {"partition": partition, "time": time_, "mem": mem, "account": account,
                 "gpus_per_job": gpus_per_job, "threads_per_job": threads_per_job}
        settings = {**sweep.slurm, **{k: v for k, v in given.items() if v is not None}}
        sweeps.submit_slurm(store, sweep, settings, echo=click.echo)
        if wait_:
            click.echo(sweeps.format_status(sweeps.wait(store, sweep)))


@sweep_group.command("status")
@click.argument("path", type=click.Path())
@click.pass_obj
def status_cmd(store, path):
    """One table of every job: pending / running / done / failed (its log, last error)."""
    from probe import sweep as sweeps

    sweep = sweeps.load(path, store)
    click.echo(sweeps.format_status(sweeps.status_table(store, sweep)))


@sweep_group.command("collect")
@click.argument("path", type=click.Path())
@click.pass_obj
def collect_cmd(store, path):
    """`probe report` over the jobs that are done."""
    from probe import sweep as sweeps
    from probe.errors import ProbeError
    from probe.experiments import run_command

    sweep = sweeps.load(path, store)
    rows = sweeps.status_table(store, sweep)
    done = sum(r["state"] == "done" for r in rows)
    if not done:
        raise ProbeError(f"{path}: no job is done yet (probe sweep status {path})")
    click.echo(f"collecting {done} of {len(rows)} jobs")
    run_command(["--artifacts", str(store.root), "report", "--quiet"])


@sweep_group.command("job", hidden=True)
@click.argument("path", type=click.Path())
@click.option("--job", "run_id", required=True)
@click.option("--threads", type=click.IntRange(0), default=0)
@click.option("--gpus", type=click.IntRange(0), default=0)
@click.pass_obj
def job_cmd(store, path, run_id, threads, gpus):
    """One job of a sweep (what the executors start)."""
    from probe import sweep as sweeps

    sweep = sweeps.load(path, store)
    sweeps.run_job(store, sweep, run_id, gpus, threads, echo=click.echo)
