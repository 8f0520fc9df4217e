"""`probe report`: summarize every table into report.md and print it."""

from __future__ import annotations

import click

from probe.cli import cli


@cli.command("report")
@click.option("--quiet", is_flag=True, help="Write report.md without printing it.")
@click.pass_obj
def report_cmd(store, quiet):
    """Summarize tables/ (PSNR gap, memorization, locality, bases, attribution) as markdown."""
    from probe.report.summary import build_report

    path, text = build_report(store)
    if not quiet:
        click.echo(text)
    click.echo(f"report: {path}")
