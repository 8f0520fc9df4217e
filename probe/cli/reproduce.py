"""`probe reproduce`: the papers' figures and tables, each one command away."""

from __future__ import annotations

import sys

import click

from probe.cli import cli
from probe.cli.options import parse_sets
from probe.errors import ProbeError


@cli.command("reproduce")
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="Every target, its paper figure and cost.")
@click.option("--all", "all_", is_flag=True,
              help="Every target in turn (they share their runs); with --check, exit 1 after "
                   "the last when any expectation did not hold.")
@click.option("--scale", type=click.Choice(["laptop", "paper"]), default="laptop",
              help="laptop: embedded or synthetic data, minutes on a CPU; paper: the papers' "
                   "data sets, sizes, N and training lengths (GPUs).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a variable of the target (e.g. root=~/data/celeba, steps=500).")
@click.option("--check", is_flag=True,
              help="After running, test the target's expectation on its tables; exit 1 with "
                   "a one-line reason when it does not hold.")
@click.option("--publish", type=click.Path(file_okay=False), default=None,
              help="With --check: copy the target's tables, figures and verdict (with the "
                   "command, commit and wall time) into DIR/NAME (docs/results).")
@click.option("--summarize", type=click.Path(file_okay=False), default=None,
              help="Write DIR/README.md from the verdicts published there, beside the papers' "
                   "numbers, and stop.")
@click.option("--dry-run", is_flag=True, help="Print the commands and stop.")
@click.pass_obj
def reproduce_cmd(store, name, list_, all_, scale, overrides, check, publish, summarize,
                  dry_run):
    """Run target NAME (`--list` shows them; `--all`: every one) at a scale, reusing runs other
    targets trained."""
    import time

    from probe.reproduce import listing, results_readme, split_overrides

    if summarize:
        click.echo(f"results: {results_readme(summarize)}")
        return
    if list_:
        rows = listing()
        width = max(len(r["name"]) for r in rows)
        click.echo(f"{'target':<{width}}  {'laptop min':>10}  {'paper':>22}  "
                   "figure / what it shows")
        for r in rows:
            click.echo(f"{r['name']:<{width}}  {str(r['laptop_minutes']):>10}  "
                       f"{str(r['paper_minutes']):>22}  {r['paper']}: {r['shows']}")
        click.echo("laptop min: measured by `--all` on a 2-core CPU, targets in this order (one "
                   "whose runs an earlier target trained costs only its probes)")
        return
    if bool(name) == all_:
        raise click.UsageError("give a target NAME, --all or --list")
    pairs = parse_sets(overrides)
    names = [r["name"] for r in listing()] if all_ else [name]
    failed, broken = {}, {}
    start = time.time()
    for one, its_pairs in split_overrides(names, pairs, scale).items():
        try:
            reason = _run_one(store, one, scale, its_pairs, check, publish, dry_run)
        except ProbeError as exc:
            if not all_:
                raise
            click.echo(f"{one}: error: {exc}")  # the other targets still run
            broken[one] = str(exc)
            continue
        if reason is not None:
            failed[one] = reason
    if all_ and not dry_run:
        click.echo(f"all {len(names)} targets: {(time.time() - start) / 60:.1f} min")
        if publish:
            click.echo(f"results: {results_readme(publish)}")
    if broken:
        raise ProbeError(f"{len(broken)} of {len(names)} targets stopped on an error: "
                         + ", ".join(f"{n} ({r})" for n, r in broken.items()))
    if failed:
        line = (f"{len(failed)} of {len(names)} targets did not hold: {', '.join(failed)}"
                if all_ else f"{name}: {failed[name]}")
        click.echo(f"error: {line}", err=True)
        sys.exit(1)


def _run_one(store, name, scale, pairs, check, publish, dry_run) -> str | None:
    """Run one target (and check and publish it); the reason when its check did not hold."""
    import time

    from probe.cli.options import command_line
    from probe.reproduce import check_target, commit_of, run_target
    from probe.reproduce import publish as publish_results

    start = time.time()
    runs = run_target(name, store, scale, pairs, dry_run=dry_run, echo=click.echo)
    if dry_run or not check:
        return None
    verdict = check_target(name, store, runs)
    click.echo(f"check {'holds' if verdict.ok else 'FAILS'}: {verdict.reason}")
    if publish:
        folder = publish_results(name, store, runs, verdict, publish, start, {
            "scale": scale, "command": command_line(), "commit": commit_of(),
            "wall_s": round(time.time() - start, 1)})
        click.echo(f"published: {folder}")
    return None if verdict.ok else verdict.reason
