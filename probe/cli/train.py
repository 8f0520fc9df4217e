"""`probe train-split` and `probe models list | show | hooks`."""

from __future__ import annotations

import dataclasses
import os

import click

from probe.cli import cli
from probe.cli.options import command_line, data_options, dry_run_option, print_config
from probe.config import (
    LR_SCHEDULES,
    OBJECTIVES,
    ModelConfig,
    RunConfig,
    SubsetConfig,
    TrainConfig,
    recipe,
)

_T, _M, _S = TrainConfig(), ModelConfig(), SubsetConfig()


@cli.command("train-split")
@click.option("--n", "ns", type=click.IntRange(1), multiple=True, required=True,
              help="Training-subset size; repeat to train several.")
@data_options
@click.option("--arch", default=_M.arch, help="Model preset (`probe models list`).")
@click.option("--split", type=click.Choice(["a", "b", "both"]), default="a",
              help="Subset split: a (nested), b (disjoint twin) or both.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="Default: the family's recipe (probe.config.RECIPES), as are --batch, --lr, "
                   "--lr-warmup-kimg, --lr-schedule and the EMA; --dry-run prints them.")
@click.option("--window", "windows", multiple=True,
              help="Attention window LAYERS:SIZE (sliding, e.g. 0-3:5), LAYERS:pSIZE "
                   "(partitions), LAYERS:global, or a preset such as an-default "
                   "(`probe models windows`); repeatable, later ones win.")
@click.option("--learn-sigma", is_flag=True, help="ddpm: also learn the variance.")
@click.option("--steps", type=click.IntRange(1), default=_T.steps)
@click.option("--kimg", type=click.FloatRange(0, min_open=True), default=None,
              help="Budget in thousands of images seen instead of --steps (the same compute "
                   "for every N of a sweep, whatever the batch).")
@click.option("--batch", type=click.IntRange(1), default=None)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--lr-warmup-kimg", type=click.FloatRange(0), default=None,
              help="Linear lr ramp over the first thousands of images.")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=None)
@click.option("--weight-decay", type=click.FloatRange(0), default=_T.weight_decay)
@click.option("--ema-halflife-kimg", type=click.FloatRange(0, min_open=True), default=None,
              help="EMA half-life in thousands of images (EDM).")
@click.option("--ema-rampup", type=click.FloatRange(0), default=None,
              help="EMA half-life at most this x the images seen so far (EDM; 0: no ramp-up).")
@click.option("--ema-decay", type=click.FloatRange(0, 1), default=None,
              help="A fixed per-step EMA decay instead of the half-life (DiT: 0.9999).")
@click.option("--eval-every", type=click.IntRange(0), default=_T.eval_every,
              help="Steps between memorization curves (denoising error on fixed training and "
                   "held-out images) in stats.jsonl and curves.png; 0: off.")
@click.option("--grad-clip", type=click.FloatRange(0), default=_T.grad_clip,
              help="Clip the gradient norm (0: off).")
@click.option("--seed", type=click.IntRange(0), default=_T.seed, help="Model and training seed.")
@click.option("--subset-seed", type=click.IntRange(0), default=_S.seed,
              help="Subset permutation seed.")
@click.option("--test-size", type=click.IntRange(0), default=_S.test_size)
@click.option("--checkpoint-every", type=click.IntRange(1), default=_T.checkpoint_every)
@click.option("--keep-checkpoints", is_flag=True,
              help="Keep every periodic checkpoint (needed by `attribution --influence`).")
@click.option("--log-every", type=click.IntRange(1), default=_T.log_every,
              help="Steps between stats.jsonl lines. Off a terminal, progress lines come "
                   "every ~10 %% of the run, or every --log-every steps if coarser.")
@click.option("--sample-grid", type=click.IntRange(0), default=_T.sample_grid,
              help="Samples in the final grid PNG (0: none).")
@click.option("--compile", "compile_", type=click.Choice(["auto", "on", "off"]),
              default=_T.compile, help="torch.compile (auto: on CUDA).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=_T.precision,
              help="auto: bf16 autocast on CUDA, fp32 on CPU.")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue this run directory (its architecture must match --arch).")
@dry_run_option
@click.pass_obj
def train_split(store, ns, data_config, arch, split, objective, windows, learn_sigma, steps,
                kimg, batch, lr, lr_warmup_kimg, lr_schedule, weight_decay, ema_halflife_kimg,
                ema_rampup, ema_decay, eval_every, grad_clip, seed, subset_seed, test_size,
                checkpoint_every, keep_checkpoints, log_every, sample_grid, compile_,
                precision, resume, dry_run, plan=False):
    """Train denoisers on nested subsets; prints `run: PATH` for each run."""
    from probe.config import check_run_config
    from probe.data.prepare import prepare
    from probe.models import zoo
    from probe.train import dry_run as dry_run_check
    from probe.train import resolve, train_run

    family = zoo.preset(arch).family  # unknown arch: one line, before any work
    given = {"objective": objective, "batch": batch, "lr": lr, "lr_warmup_kimg": lr_warmup_kimg,
             "lr_schedule": lr_schedule, "ema_halflife_kimg": ema_halflife_kimg,
             "ema_rampup": None if ema_rampup == 0 else ema_rampup, "ema_decay": ema_decay}
    chosen = recipe(family)
    chosen.update({k: v for k, v in given.items() if v is not None})
    if ema_rampup == 0:
        chosen["ema_rampup"] = None
    splits = ("a", "b") if split == "both" else (split,)
    if resume and (len(ns) > 1 or len(splits) > 1):
        raise click.UsageError("--resume continues one run: give one --n and one --split")
    configs = []
    for n in ns:
        for s in splits:
            configs.append(RunConfig(
                data=data_config,
                subsets=SubsetConfig(ns=tuple(sorted(set(ns))), seed=subset_seed,
                                     test_size=test_size),
                model=dataclasses.replace(_M, arch=arch, learn_sigma=learn_sigma,
                                          windows=tuple(windows)),
                train=TrainConfig(n=n, split=s, steps=steps, kimg=kimg, **chosen,
                                  weight_decay=weight_decay, eval_every=eval_every,
                                  grad_clip=grad_clip, seed=seed,
                                  checkpoint_every=checkpoint_every,
                                  keep_checkpoints=keep_checkpoints, log_every=log_every,
                                  sample_grid=sample_grid, compile=compile_,
                                  precision=precision)))
    for c in configs:  # validate the model (windows vs grid, ...) before any work: shapes only
        check_run_config(c)  # --lr nan, ...
        zoo.build(dataclasses.replace(c.model, image_size=data_config.size,
                                      channels=data_config.channels or 1), device="meta")
    if plan:  # `planned_configs` (probe sweep): the resolved configs, nothing printed
        return [dry_run_check(c, store, resume) for c in configs]
    if dry_run:  # writes nothing, prepares nothing; refuses what the real run would refuse
        for c in configs:
            print_config(dry_run_check(c, store, resume))
        return
    prepared = prepare(data_config, store, command_line())
    resolved = [resolve(c, prepared) for c in configs]
    from probe.report.training_figures import curves_figure
    from probe.runs import record_last

    writer = int(os.environ.get("RANK", 0)) == 0  # under torchrun only rank 0 writes
    run_dirs = []
    for c in resolved:
        run_dirs.append(train_run(c, store, command_line(), resume=resume))
        if writer:
            curves_figure(run_dirs[-1])
            click.echo(f"run: {run_dirs[-1]}")
    if writer:
        record_last(store, run_dirs)
    return run_dirs


def planned_configs(store, args: list[str]) -> list[RunConfig]:
    """The RunConfigs `probe train-split ARGS` would train, resolved as training resolves them
    (image size and channels from the data set, which is not prepared), refused in one line
    where the command would refuse them; nothing is written. `probe sweep` names its jobs by
    them."""
    with train_split.make_context("train-split", list(args), obj=store) as ctx:
        return ctx.invoke(train_split.callback, **ctx.params, plan=True)


@cli.group()
def models() -> None:
    """The model zoo."""


@models.command("list")
@click.option("--image-size", type=click.IntRange(2), default=32)
@click.option("--channels", type=click.Choice(["1", "3"]), default="1")
@click.option("--family", default=None, help="Only this family (dit, unet, ...).")
@click.option("--no-macs", is_flag=True, help="Leave the MACs column out.")
def list_cmd(image_size, channels, family, no_macs):
    """Print every preset: parameters and MACs per image.

    Counted from the architecture (`probe.models.counts`), no model is built: the figures equal
    the built model's parameter count and torch's FLOP counter (tests check it). U-DiT's MACs are
    its merged (published, inference) form's; `probe models show NAME` builds one preset.
    """
    from probe.errors import ProbeError
    from probe.models import zoo

    click.echo(f"{'name':22s} {'family':8s} {'params':>12s} {'MACs/image':>14s}  description")
    for name, p in zoo.PRESETS.items():
        if family and p.family != family:
            continue
        cfg = ModelConfig(arch=name, image_size=image_size, channels=int(channels))
        try:
            counts = zoo.count(cfg)
        except ProbeError as exc:  # a preset that does not fit this image size
            click.echo(f"{name:22s} {p.family:8s} {'-':>12s} {'-':>14s}  ({exc})")
            continue
        macs = "-" if no_macs else f"{counts.macs:,}"
        click.echo(f"{name:22s} {p.family:8s} {counts.params:>12,} {macs:>14s}"
                   f"  {p.description}")


@models.command("show")
@click.argument("arch")
@click.option("--image-size", type=click.IntRange(2), default=32)
@click.option("--channels", type=click.Choice(["1", "3"]), default="1")
def show_cmd(arch, image_size, channels):
    """Build one preset (shapes only, on torch's meta device) and print its parameters, MACs per
    image (torch's FLOP counter) and hook points."""
    from probe.models import zoo
    from probe.models.hooks import hook_points

    p = zoo.preset(arch)
    cfg = ModelConfig(arch=arch, image_size=image_size, channels=int(channels))
    model = zoo.build(cfg, device="meta")
    inference = zoo.inference_form(model)
    rows = [("name", arch), ("family", p.family), ("description", p.description),
            ("input", f"{cfg.channels}x{image_size}x{image_size}"),
            ("parameters", f"{zoo.count_parameters(model):,}")]
    if inference is not model:
        rows += [("merged parameters", f"{zoo.count_parameters(inference):,}"),
                 ("MACs/image", f"{zoo.macs_per_image(inference, cfg):,} (merged model)"),
                 ("training MACs", f"{zoo.macs_per_image(model, cfg):,} (over-parameterised "
                                   "forward)")]
    else:
        rows.append(("MACs/image", f"{zoo.macs_per_image(model, cfg):,}"))
    rows.append(("hook points", f"{len(hook_points(model))} (`probe models hooks {arch}`)"))
    for key, value in rows:
        click.echo(f"{key + ':':19s} {value}")


@models.command("hooks")
@click.argument("arch")
@click.option("--image-size", type=click.IntRange(2), default=32)
@click.option("--channels", type=click.Choice(["1", "3"]), default="1")
def hooks_cmd(arch, image_size, channels):
    """List the hook points of a preset."""
    from probe.models import zoo
    from probe.models.hooks import hook_points

    model = zoo.build(ModelConfig(arch=arch, image_size=image_size, channels=int(channels)),
                      device="meta")  # names only: no weights needed
    for name in hook_points(model):
        click.echo(name)


@models.command("windows")
@click.option("--depth", type=click.IntRange(1), default=12, show_default=True,
              help="Attention layers to lay the presets out on.")
@click.option("--arch", default=None, help="Take depth and token grid from this preset instead.")
@click.option("--image-size", type=click.IntRange(2), default=32, show_default=True,
              help="With --arch: the image size the windows are checked against.")
def windows_cmd(depth, arch, image_size):
    """Print every window preset: its per-layer windows (- = global) and where it comes from."""
    from probe.errors import ProbeError
    from probe.models import zoo
    from probe.models.windows import WINDOW_PRESETS

    grid = None
    if arch:
        depth, grid = zoo.window_layout(arch, image_size)
        if not depth:
            raise ProbeError(f"{arch} takes no attention windows")
    click.echo(f"{'name':14s} windows per layer 0..{depth - 1}")
    for name, p in WINDOW_PRESETS.items():
        try:
            # without --arch, a grid just large enough for the preset's widest window
            layers = zoo.parse_windows([name], depth, grid or (max(p.sizes),) * 2)
            shown = " ".join(str(w) if w else "-" for w in layers)
        except ProbeError as exc:  # too few layers, or a window larger than the grid
            shown = f"({exc})"
        click.echo(f"{name:14s} {shown}  {p.description}")
