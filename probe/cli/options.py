"""Options shared by several commands, and small helpers for the command modules."""

from __future__ import annotations

import functools
import shlex
import sys

import click

from probe.config import CROPS, DATASETS, DataConfig, dumps_toml

_DEFAULT = DataConfig()


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["probe", *sys.argv[1:]])


def data_options(func):
    """--dataset/--root/--size/... -> a `data_config` keyword argument (a DataConfig)."""
    options = [
        click.option("--dataset", type=click.Choice(DATASETS), default=_DEFAULT.dataset,
                     help="Data set: embedded (mnist, lfw, digits, patches), synthetic (disks, "
                          "c-alpha) or read from --root."),
        click.option("--root", type=click.Path(), default=None,
                     help="Folder of a downloaded data set (celeba, lsun, imagenet, folder, "
                          "fashion-mnist)."),
        click.option("--size", type=click.IntRange(2, 4096), default=_DEFAULT.size,
                     help="Image height = width in pixels."),
        click.option("--channels", type=click.Choice(["1", "3"]), default=None,
                     help="1 (mean of RGB) or 3; default: the source's own."),
        click.option("--crop", type=click.Choice(CROPS), default=_DEFAULT.crop,
                     help="center, dit (CelebA centre 140), kadkhodaie (rows 29:-29, "
                          "cols 9:-9), none."),
        click.option("--dedup", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Drop near-duplicates whose 20x20 thumbnails correlate above this."),
        click.option("--classes", multiple=True, help="imagenet: keep only these wnids."),
        click.option("--count", type=click.IntRange(1), default=None,
                     help="Synthetic sets and patches: how many images (default 10000)."),
        click.option("--alpha", type=click.FloatRange(0, min_open=True),
                     default=_DEFAULT.alpha, help="c-alpha: boundary regularity."),
        click.option("--generator-seed", type=int, default=_DEFAULT.generator_seed,
                     help="Synthetic sets and patches: generator seed."),
    ]

    @functools.wraps(func)  # keeps options already declared on func (__click_params__)
    def wrapper(*args, dataset, root, size, channels, crop, dedup, classes, count, alpha,
                generator_seed, **kwargs):
        kwargs["data_config"] = DataConfig(
            dataset=dataset, root=root, size=size, channels=int(channels) if channels else None,
            crop=crop, dedup=dedup, classes=tuple(classes), count=count, alpha=alpha,
            generator_seed=generator_seed)
        return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Print the resolved configuration and stop.")


def print_config(*configs) -> None:
    for cfg in configs:
        click.echo(f"[{type(cfg).__name__}]")
        click.echo(dumps_toml(cfg))
