"""`probe data prepare | subsets | show`."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, data_options, dry_run_option, print_config
from probe.config import SubsetConfig
from probe.data.prepare import prepare
from probe.data.subsets import read_subsets, subsets_table, write_subsets

_SUBSETS = SubsetConfig()


@cli.group()
def data() -> None:
    """Prepare data sets and their nested / disjoint subsets."""


@data.command("prepare")
@data_options
@dry_run_option
@click.pass_obj
def prepare_cmd(store, data_config, dry_run):
    """Cache a data set as a uint8 array with a manifest."""
    if dry_run:
        return print_config(data_config)
    prepared = prepare(data_config, store, command_line(), log=click.echo)
    m = prepared.manifest
    click.echo(f"data: {prepared.directory}  ({m['count']} images, {m['size']}x{m['size']}x"
               f"{m['channels']}, sha256 {m['sha256'][:12]})")


@data.command("subsets")
@data_options
@click.option("--n", "ns", type=click.IntRange(1), multiple=True, required=True,
              help="Subset size; repeat for several.")
@click.option("--seed", type=click.IntRange(0), default=_SUBSETS.seed, help="Permutation seed.")
@click.option("--test-size", type=click.IntRange(0), default=_SUBSETS.test_size,
              help="Held-out images (at most a fifth of a set without a test partition).")
@dry_run_option
@click.pass_obj
def subsets_cmd(store, data_config, ns, seed, test_size, dry_run):
    """Write nested (split a) and disjoint (split b) subsets, preparing the data if needed."""
    subset_config = SubsetConfig(ns=tuple(ns), seed=seed, test_size=test_size)
    if dry_run:
        return print_config(data_config, subset_config)
    prepared = prepare(data_config, store, command_line(), log=click.echo)
    path, _ = write_subsets(prepared, subset_config)
    click.echo(f"subsets: {path}")


@data.command("show")
@data_options
@click.pass_obj
def show_cmd(store, data_config):
    """Print a prepared data set's manifest and subsets as a table."""
    prepared = prepare(data_config, store, command_line(), log=click.echo)
    m = prepared.manifest
    click.echo(f"{prepared.directory}: {m['source']}, {m['count']} images "
               f"{m['size']}x{m['size']}x{m['channels']}, partitions {m['partitions']}")
    doc = read_subsets(prepared)
    click.echo(f"seed {doc['seed']}, pool {doc['pool_size']}, test {len(doc['test'])}")
    click.echo(subsets_table(doc).to_string(index=False))
