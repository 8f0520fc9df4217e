"""Training recipes: EMA as a half-life (EDM), the lr schedule, batch-norm statistics of the EMA
re-estimated, memorization curves, and samplers that reach a memorized image's contrast."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probe import optim
from probe.artifacts import Artifacts
from probe.cli import cli
from probe.config import RECIPES, DataConfig, ModelConfig, RunConfig, SubsetConfig, TrainConfig
from probe.diffusion.samplers import default_sampler, sample_from_seeds
from probe.metrics.psnr import psnr
from probe.models.unet import BiasFreeBatchNorm
from probe.runs import load_run
from probe.train import train_run


def edm_beta(batch_size, cur_nimg, ema_halflife_kimg, ema_rampup_ratio):
    """EDM's training_loop.py, verbatim in substance: the decay after a step of batch_size."""
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))


@pytest.mark.parametrize("batch,halflife,rampup", [(32, 500.0, 0.05), (256, 1774.0, 0.05),
                                                   (64, 10.0, None)])
def test_ema_decay_is_edms_half_life(batch, halflife, rampup):
    cfg = TrainConfig(batch=batch, ema_halflife_kimg=halflife, ema_rampup=rampup)
    for step in (0, 1, 99, 2000, 10**6):
        nimg = (step + 1) * batch  # EDM updates its EMA after counting the step's images
        assert optim.ema_beta(cfg, step) == pytest.approx(edm_beta(batch, nimg, halflife, rampup))
    # a half-life: after h images of unchanged weights, half the old average is left
    late = 10**7
    steps = halflife * 1000 / batch
    assert optim.ema_beta(cfg, late) ** steps == pytest.approx(0.5)
    assert optim.ema_beta(dataclasses.replace(cfg, ema_decay=0.9999), 5) == 0.9999


def test_lr_warms_up_linearly_and_decays_by_cosine():
    cfg = TrainConfig(lr=1e-3, batch=10, lr_warmup_kimg=0.1, lr_schedule="cosine")
    lrs = [optim.lr_at(cfg, s, 110) for s in range(110)]
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10)  # 100 images of ramp
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(0.5e-3)
    assert lrs[-1] < 1e-6 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    flat = dataclasses.replace(cfg, lr_warmup_kimg=0.0, lr_schedule="constant")
    assert {optim.lr_at(flat, s, 110) for s in range(110)} == {1e-3}


def test_recalibrated_statistics_are_the_average_over_batches():
    torch.manual_seed(0)
    norm = BiasFreeBatchNorm(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, bias=False), norm).eval()
    batches = [torch.randn(8, 1, 6, 6) * (1 + i) for i in range(5)]

    def loss(m, x, generator=None):
        return m(x).sum()

    assert optim.recalibrate_norms(model, lambda i: batches[i], loss, None, count=5) == 1
    with torch.no_grad():
        want = torch.stack([(model[0](b).var(dim=(0, 2, 3), unbiased=False) + norm.eps).sqrt()
                            for b in batches]).mean(0)
    torch.testing.assert_close(norm.running_sd.flatten(), want)
    assert norm.momentum == 0.1 and not model.training


def test_every_family_has_a_recipe_with_a_source():
    from probe.models import zoo

    families = {p.family for p in zoo.PRESETS.values()}
    assert families <= set(RECIPES)
    assert RECIPES["bf-unet"]["objective"] == "edm"  # measured: see probe.config
    assert default_sampler("blind") == "kadkhodaie" and default_sampler("ddpm") == "ddpm"


@pytest.fixture(scope="module")
def memorized_one(tmp_path_factory):
    """The bf-unet recipe on one 16x16 MNIST digit, with memorization curves."""
    store = Artifacts.at(tmp_path_factory.mktemp("recipe"))
    cfg = RunConfig(data=DataConfig(dataset="mnist", size=16),
                    subsets=SubsetConfig(ns=(1,), test_size=32),
                    model=ModelConfig(arch="bf-unet-xs"),
                    train=TrainConfig(n=1, steps=1000, **RECIPES["bf-unet"], eval_every=250,
                                      eval_images=16, log_every=250, checkpoint_every=1000,
                                      sample_grid=0))
    return store, train_run(cfg, store, progress=False, log=lambda m: None)


def test_samples_of_a_model_that_memorized_one_image_have_its_contrast(memorized_one):
    """The default sampler of the recipe reproduces the one training image at its contrast:
    median PSNR against it >= 25 dB (measured: ~30 dB after 1000 steps; the worst of 16
    samples ~24 dB), every sample >= 22 dB, median contrast within 10 %."""
    store, run_dir = memorized_one
    run = load_run(run_dir, store)
    target = run.images(run.train_indices)
    samples = sample_from_seeds(run.denoiser, [(0, i) for i in range(16)], "auto", 50)
    values = psnr(samples, target.expand_as(samples))
    assert np.median(values) >= 25 and values.min() >= 22, values
    contrast = samples.flatten(1).std(1) / target.flatten(1).std(1)  # 1: the image's own
    assert 0.9 < contrast.median() < 1.1 and contrast.min() > 0.8, contrast  # not faint


def test_curves_show_training_error_below_held_out_error(memorized_one):
    _, run_dir = memorized_one
    evals = [r for r in map(json.loads, (run_dir / "stats.jsonl").open()) if "eval_train_mse" in r]
    assert [r["step"] for r in evals] == [250, 500, 750, 1000]
    last = evals[-1]
    assert all(tr < te for tr, te in zip(last["eval_train_mse"], last["eval_test_mse"]))
    assert last["eval_psnr_gap"] > 3 and math.isfinite(last["eval_psnr_gap"])


def test_train_split_takes_the_family_recipe_and_kimg(tmp_path):
    result = CliRunner().invoke(cli, ["--artifacts", str(tmp_path), "train-split", "--n", "10",
                                      "--dataset", "digits", "--size", "8", "--arch",
                                      "bf-unet-xs", "--kimg", "1.6", "--lr", "5e-4",
                                      "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert 'objective = "edm"' in result.stdout and "batch = 32" in result.stdout
    assert "lr = 0.0005" in result.stdout and "kimg = 1.6" in result.stdout
    assert TrainConfig(kimg=1.6, batch=32).total_steps == 50
