"""`probe experiment FILE.toml`: run a paper figure / sweep / the demo end to end."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import parse_sets


@cli.command("experiment")
@click.argument("path", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a variable of the experiment's [vars].")
@click.option("--dry-run", is_flag=True, help="Print the commands and stop.")
@click.pass_obj
def experiment_cmd(store, path, overrides, dry_run):
    """Run every step of an experiment file (each an ordinary probe command)."""
    from probe.experiments import run_experiment

    pairs = parse_sets(overrides)
    runs = run_experiment(path, str(store.root), pairs, dry_run=dry_run, echo=click.echo)
    if not dry_run:
        click.echo(f"experiment done: {len(runs)} runs under {store.root / 'runs'}")
