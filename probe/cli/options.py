"""Options shared by several commands, and small helpers for the command modules."""

from __future__ import annotations

import functools
import shlex
import sys
from dataclasses import dataclass

import click

from probe.config import (
    CROPS,
    DATASETS,
    PROBE_SOURCES,
    SYNTHETIC_COUNT,
    DataConfig,
    check_sigmas,
    dumps_toml,
)
from probe.errors import ProbeError

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
                     help="Synthetic sets and patches: how many images "
                          f"(default {SYNTHETIC_COUNT})."),
        click.option("--alpha", type=click.FloatRange(0, min_open=True),
                     default=_DEFAULT.alpha, help="c-alpha: boundary regularity."),
        click.option("--generator-seed", type=click.IntRange(0), default=_DEFAULT.generator_seed,
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


# ------------------------------------------------------------------------ probe commands


class Sigmas(click.ParamType):
    """"0.1,0.5,2" -> (0.1, 0.5, 2.0); a default given as a tuple of floats passes unchanged,
    so no noise level makes a float -> text -> float round trip."""

    name = "SIGMA[,SIGMA...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple | list):
            items = value
        else:
            items = [s for s in str(value).split(",") if s.strip()]
        try:
            return check_sigmas(float(s) for s in items)
        except ValueError:
            self.fail(f"must be comma-separated numbers, got {value!r}", param, ctx)
        except ProbeError as exc:
            self.fail(str(exc), param, ctx)


def _sigmas_text(sigmas) -> str:
    return ",".join(f"{s:g}" for s in sigmas)


@dataclass(frozen=True)
class OutsideModels:
    """`--model PATH...` with its companions: the specs (probe.external.ModelSpec) and the
    training images named by `--train-data`."""

    specs: tuple = ()
    train_data: str | None = None

    def __bool__(self) -> bool:
        return bool(self.specs)


def model_options(func):
    """--model (alias --diffusers), --weights, --value-range, --noise-input, --train-data ->
    a `models` keyword argument (OutsideModels)."""
    options = [
        click.option("--model", "--diffusers", "model_paths", multiple=True,
                     help="A model trained elsewhere (repeatable), format detected from the "
                          "files: a run directory, a diffusers model or pipeline folder, a "
                          "Mohan et al. or Kadkhodaie et al. .pt, or module.py:factory with "
                          "--weights. Probed on the data set given by --dataset etc."),
        click.option("--weights", type=click.Path(), default=None,
                     help="--model module.py:factory: its safetensors weights."),
        click.option("--value-range", type=click.Choice(["0,1", "-1,1"]), default=None,
                     help="The data range the model was trained on (module.py:factory; for "
                          "other formats it is checked against what the files say)."),
        click.option("--noise-input", type=click.Choice(["none", "sigma", "t"]), default=None,
                     help="module.py:factory: how the noise level reaches it (none: blind; "
                          "sigma: its std on the model's scale; t: a DDPM timestep)."),
        click.option("--train-data", default=None,
                     help="The outside models' training images: a folder of images, or rows "
                          "START:STOP of the probe data set. Without it, metrics that need "
                          "them are refused."),
    ]

    @functools.wraps(func)
    def wrapper(*args, model_paths, weights, value_range, noise_input, train_data, **kwargs):
        from probe.external import ModelSpec, is_python_spec, parse_value_range

        specs = tuple(ModelSpec(p, weights if is_python_spec(p) else None,
                                parse_value_range(value_range),
                                noise_input if is_python_spec(p) else None)
                      for p in model_paths)
        if (weights or noise_input) and not any(is_python_spec(p) for p in model_paths):
            raise ProbeError("--weights and --noise-input go with --model module.py:factory")
        if train_data and not model_paths:
            raise ProbeError("--train-data names the training images of a --model")
        kwargs["models"] = OutsideModels(specs, train_data)
        return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def probe_options(defaults, *, source: bool = True, images: bool = True, models: bool = True):
    """The options every probe command has, from its config's defaults: RUN..., --last,
    --sigmas, --images, --from, --seed, --figures/--no-figures, --dry-run, and (where the probe
    runs on outside models) --model and its companions with the data options."""

    def decorate(func):
        params = [
            click.argument("runs", nargs=-1, metavar="[RUN]..."),
            click.option("--last", is_flag=True,
                         help="With no RUN: only the runs the latest `train-split` made. "
                              "Without it, every finished run under the artifacts root."),
        ]
        if hasattr(defaults, "sigmas"):
            params.append(click.option(
                "--sigmas", type=Sigmas(), default=defaults.sigmas,
                show_default=_sigmas_text(defaults.sigmas),
                help="Noise levels, comma-separated, on the [-1, 1] data scale."))
        if images:
            params.append(click.option("--images", type=click.IntRange(1),
                                       default=defaults.images,
                                       help="Fixed, seeded probe images per run."))
        if source:
            params.append(click.option(
                "--from", "source", type=click.Choice(PROBE_SOURCES), default=defaults.source,
                help="Probe images from the held-out set or the run's own training subset."))
        params += [
            click.option("--seed", type=click.IntRange(0), default=defaults.seed,
                         help="Seeds the image choice and the noise (probe.seeding)."),
            click.option("--figures/--no-figures", default=True,
                         help="Draw the figures afterwards."),
            dry_run_option,
        ]
        if models:
            func = model_options(data_options(func))
        for param in reversed(params):
            func = param(func)
        return func

    return decorate


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def run_probe_command(name: str, store, refs, cfg, *, last: bool = False,
                      models: OutsideModels = OutsideModels(),
                      data_config=None, dry_run: bool = False, figures: bool = True,
                      describe=None, describe_runs=None):
    """Load the runs, then dry-run (print the plan) or run probe `name` through the driver;
    prints `probe:`, `table:` and `figure:` lines on stdout. Returns the ProbeResult (None on
    a dry run). For --dry-run, `describe(plan)` renders one run's plan and `describe_runs(runs)`
    gives lines about the runs together (pairs)."""
    from probe import pipeline

    probe = pipeline.PROBES[name]
    probe.validate(cfg)  # before any run is loaded
    runs = pipeline.load_runs(refs, store, models=models.specs, train_data=models.train_data,
                              data_config=data_config,
                              last=last, command=command_line(), log=echo_err)
    if dry_run:
        pipeline.check_runs(probe, runs, cfg)
        paths = [store.probe_file(r.run_id, probe.filename) for r in runs]
        for run, plan in zip(runs, probe.plan(runs, cfg, paths, echo_err)):
            click.echo(f"run: {run.run_id} ({run.arch})"
                       + (f"  {describe(plan)}" if describe else ""))
        for line in describe_runs(runs) if describe_runs else []:
            click.echo(line)
        print_config(cfg)
        return None
    result = pipeline.run_probe(probe, runs, store, cfg, command=command_line(), log=echo_err,
                                figures=figures)
    for path in result.files:
        click.echo(f"probe: {path}")
    if result.table_path is not None:
        click.echo(f"table: {result.table_path}")
    for path in result.figures:
        click.echo(f"figure: {path}")
    return result
