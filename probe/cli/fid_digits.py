"""`probe fid-digits`: train the feature network laptop FID uses on a labelled set."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.cli.options import command_line, data_options
from probe.config import FID_DIGITS_STEPS, SubsetConfig

_SUBSETS = SubsetConfig()


@cli.command("fid-digits")
@data_options
@click.option("--seed", type=click.IntRange(0), default=_SUBSETS.seed,
              help="The subsets' permutation seed: the held-out images it keeps out (use "
                   "train-split's).")
@click.option("--test-size", type=click.IntRange(1), default=_SUBSETS.test_size,
              help="Held-out images (use train-split's): never trained on, FID's real images.")
@click.option("--steps", type=click.IntRange(1), default=FID_DIGITS_STEPS,
              help="Training steps (batch 128).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where the TorchScript file goes (default: "
                   "<artifacts>/features/fid-digits_<data>_test<T>-seed<S>.pt).")
@click.pass_obj
def fid_digits_cmd(store, data_config, seed, test_size, steps, out):
    """Train fid-digits, a small classifier of a labelled set (mnist, digits, fashion-mnist)
    whose hidden features give laptop FID through `--fid-weights` (not FID-Inception numbers).

    Trained on every image outside the held-out set; reused when the file already holds the
    same network. The last line on stdout names the file.
    """
    from probe.metrics import fid_digits  # torch: only when the command runs

    built = fid_digits.build(data_config, SubsetConfig(seed=seed, test_size=test_size), store,
                             out, steps=steps, command=command_line(),
                             log=click.echo)
    click.echo(f"fid-digits: {built.path}  (held-out accuracy "
               f"{built.meta['test_accuracy']:.1%}, {built.meta['train_images']} training images)")
    return built.path
