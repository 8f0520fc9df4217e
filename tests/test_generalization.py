"""`probe generalization` and `probe sample`: the PSNR gap of oracles with known answers, the
whole pipeline on tiny trained runs (files, tidy table, pairing, resume, figures) and bad input
as one line with exit code 2."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from probe import artifacts, pipeline
from probe.artifacts import Artifacts
from probe.cli import cli
from probe.config import (
    DataConfig,
    GeneralizationConfig,
    ModelConfig,
    RunConfig,
    SubsetConfig,
    TrainConfig,
)
from probe.errors import ProbeError
from probe.metrics import generalization as GM
from probe.metrics.psnr import denoising_psnr, psnr_gap
from probe.probes import generalization as G
from probe.runs import load_run
from probe.train import train_run
from tests.helpers import FakeRun

H5, TABLE = artifacts.GENERALIZATION_H5, artifacts.GENERALIZATION_TABLE


def run_generalization(runs, store, cfg):
    """Probe `runs` (directories or loaded runs) through the driver; the tidy table."""
    loaded = [r if hasattr(r, "denoiser") else load_run(r, store) for r in runs]
    return pipeline.run_probe(G.PROBE, loaded, store, cfg, log=lambda msg: None).table

SMALL = GeneralizationConfig(sigmas=(0.05, 0.5), images=8, samples=8, steps=4, batch=8)


# ------------------------------------------------------------------------------ oracles


class Wiener(torch.nn.Module):
    """The exact posterior mean of Gaussian data N(0, Q diag(ev) Q^T): knows the distribution,
    not the training set."""

    def __init__(self, q, ev, shape):
        super().__init__()
        self.q, self.ev, self.shape = q, ev, shape

    def forward(self, x, sigma, class_labels=None):
        c = (x.flatten(1).double() @ self.q) * (self.ev / (self.ev + float(sigma) ** 2))
        return (c @ self.q.T).reshape(x.shape).to(x.dtype)


class EmpiricalPosterior(torch.nn.Module):
    """The exact posterior mean of the empirical training distribution: the ideal memorizer."""

    objective = "edm"

    def __init__(self, train):
        super().__init__()
        self.train = train.double()
        self.channels, self.image_size = train.shape[1], train.shape[-1]
        self.sigma_range = (0.002, 80.0)

    def forward(self, x, sigma, class_labels=None):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        d2 = torch.cdist(x.flatten(1).double(), self.train.flatten(1)) ** 2
        w = torch.softmax(-d2 / (2 * s**2), dim=1)
        return (w @ self.train.flatten(1)).reshape(x.shape).to(x.dtype)


SIGMAS = (0.02, 0.1, 0.5, 2.0)


def test_an_oracle_of_the_true_distribution_has_a_psnr_gap_near_zero():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    ev = torch.linspace(0.01, 0.6, 16, dtype=torch.float64)
    draw = (torch.randn(768, 16, generator=g, dtype=torch.float64) * ev.sqrt()) @ q.T
    images = draw.reshape(768, 1, 4, 4).float()
    oracle = Wiener(q, ev, (1, 4, 4))
    rows = np.arange(768)
    train = denoising_psnr(oracle, images[:384], rows[:384], SIGMAS, batch=384)
    test = denoising_psnr(oracle, images[384:], rows[384:], SIGMAS, batch=384)
    gap = psnr_gap(train, test)
    assert np.all(np.abs(gap) < 0.5), gap
    assert np.all(np.diff(train.mean(1)) < 0)  # a real curve: PSNR falls as sigma grows


def test_the_memorizer_has_a_large_psnr_gap_at_small_sigma():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(60, 1, 4, 4, generator=g) * 2 - 1
    oracle = EmpiricalPosterior(images[:20])
    rows = np.arange(60)
    gap = psnr_gap(denoising_psnr(oracle, images[:20], rows[:20], SIGMAS),
                   denoising_psnr(oracle, images[20:], rows[20:], SIGMAS))
    assert gap[0] > 40 and gap.mean() > 20
    assert gap[0] > gap[-1]


# ------------------------------------------------------------------------------- pipeline


def _train(store, dataset, split, size=8, **data):
    cfg = RunConfig(data=DataConfig(dataset=dataset, size=size, **data),
                    subsets=SubsetConfig(ns=(10,), test_size=24),
                    model=ModelConfig(arch="dit-tiny/4"),
                    train=TrainConfig(n=10, split=split, steps=2, batch=4, sample_grid=0,
                                      checkpoint_every=100))
    return train_run(cfg, store, progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = Artifacts.at(tmp_path_factory.mktemp("gen-art"))
    runs = {split: _train(store, "disks", split, count=200) for split in "ab"}
    runs["digits"] = _train(store, "digits", "a")
    return store, runs


@pytest.fixture(scope="module")
def probed(trained, tmp_path_factory):
    store, runs = trained
    out = Artifacts.at(tmp_path_factory.mktemp("gen-out"))
    table = run_generalization([runs["a"], runs["b"]], out, SMALL)
    return out, table


def test_pipeline_writes_files_tables_pairs_and_figures(trained, probed):
    store, runs = trained
    out, table = probed
    assert set(GM.COLUMNS) <= set(table.columns)
    wanted = {"psnr_train", "psnr_test", "psnr_gap", "psnr_gap_mean", "memorized_fraction",
              "nn_ratio_mean", "carlini_ratio", "reproducibility", "reproducible_fraction",
              "fid", "kid", "precision", "recall"}
    assert wanted <= set(table.metric)
    for run, rows in table.groupby("run"):
        per_sigma = rows[rows.metric == "psnr_gap"]
        assert sorted(per_sigma.sigma) == list(SMALL.sigmas)
        gap = per_sigma.value.to_numpy()
        train = rows[rows.metric == "psnr_train"].value.to_numpy()
        test = rows[rows.metric == "psnr_test"].value.to_numpy()
        np.testing.assert_allclose(gap, train - test)
        assert rows[rows.metric == "psnr_gap_mean"].value.item() == pytest.approx(gap.mean())
        assert rows[rows.metric == "psnr_gap_mean"].sigma.isna().all()
        pair = rows[rows.metric == "reproducibility"]
        assert len(pair) == 1 and pair.pair.item() == (table.run.unique().tolist()[
            1 - table.run.unique().tolist().index(run)])  # auto-paired with its twin
        fid = rows[rows.metric == "fid"]
        assert math.isnan(fid.value.item()) and "no --fid-weights" in fid.note.item()
    # the two runs' pair cosines agree (same samples, both files)
    a_id, b_id = sorted(table.run.unique())
    with h5py.File(out.probe_dir(a_id) / H5) as fa, h5py.File(out.probe_dir(b_id) / H5) as fb:
        np.testing.assert_allclose(fa[f"pairs/{b_id}/cosine"][:], fb[f"pairs/{a_id}/cosine"][:])
        assert fa["samples/images"].shape == (8, 1, 8, 8)
        assert fa["neighbours/l2_rows"].shape == (8, 10)  # N = 10 < 50 neighbours
        assert set(fa["neighbours/l2_rows"][:].ravel()) <= set(load_run(runs["a"], store)
                                                             .train_indices.tolist())
        assert fa["psnr/train"].shape == (2, 8)
    on_disk = pd.read_parquet(out.probe_dir(a_id) / f"{TABLE}.parquet")
    assert set(on_disk.run) == {a_id}
    assert set(pd.read_parquet(out.tables_dir / f"{TABLE}.parquet").run) == {a_id, b_id}
    report = GM.text_report(table)
    assert a_id in report and b_id in report and "skipped" in report

    from probe.report.generalization_figures import draw_all

    figures = draw_all(out)
    assert len(figures) == 4 and all(p.stat().st_size > 0 for p in figures)


def test_rerun_resumes_from_the_files(trained, probed, monkeypatch):
    store, runs = trained
    out, first = probed

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(G, "generate", refuse)
    monkeypatch.setattr(G, "denoising_psnr", refuse)
    again = run_generalization([runs["a"], runs["b"]], out, SMALL)
    pd.testing.assert_frame_equal(first, again)


class MeanFeatures(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)


def test_fid_weights_added_later_fill_the_quality_rows_only(trained, probed, tmp_path,
                                                            monkeypatch):
    import shutil

    store, runs = trained
    out = Artifacts.at(tmp_path / "out")
    shutil.copytree(probed[0].root, out.root)
    weights = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(MeanFeatures()), weights)

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(G, "generate", refuse)
    monkeypatch.setattr(G, "denoising_psnr", refuse)
    cfg = GeneralizationConfig(**{**SMALL.__dict__, "fid_weights": str(weights)})
    table = run_generalization([runs["a"], runs["b"]], out, cfg)
    quality = table[table.metric.isin(GM.QUALITY)]
    assert len(quality) == 8 and quality.value.notna().all()
    assert quality.note.str.contains("script").all()
    assert (quality[quality.metric == "fid"].value >= 0).all()
    assert quality[quality.metric.isin(["precision", "recall"])].value.between(0, 1).all()
    others = table[~table.metric.isin(GM.QUALITY)].reset_index(drop=True)
    before = probed[1][~probed[1].metric.isin(GM.QUALITY)].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, before)


def test_memorizing_oracles_are_caught(trained, tmp_path):
    store, runs = trained
    oracles = []
    for split in "ab":
        run = load_run(runs[split], store)
        run.denoiser = EmpiricalPosterior(run.images(run.train_indices))
        oracles.append(run)
    cfg = GeneralizationConfig(sigmas=(0.02, 0.1, 0.5), images=8, samples=8, steps=12,
                               batch=8, threshold=0.999)
    table = run_generalization(oracles, Artifacts.at(tmp_path / "out"), cfg)

    def value(metric):
        return table[table.metric == metric].value.to_numpy()

    np.testing.assert_array_equal(value("memorized_fraction"), [1.0, 1.0])
    assert np.all(value("psnr_gap_mean") > 20)
    assert np.all(value("carlini_ratio") < 0.05)
    np.testing.assert_allclose(value("nn_cosine_mean"), 1.0, atol=1e-4)
    # disjoint training sets: the two memorizers never produce the same image
    np.testing.assert_array_equal(value("reproducible_fraction"), [0.0, 0.0])


class Faint(torch.nn.Module):
    """A denoiser whose every output is `contrast` x another's about its mean grey: the faint
    copies a short run draws."""

    def __init__(self, inner, contrast: float, grey: float):
        super().__init__()
        self.inner, self.contrast, self.grey = inner, contrast, grey
        for name in ("objective", "channels", "image_size", "sigma_range"):
            setattr(self, name, getattr(inner, name))

    def forward(self, x, sigma, class_labels=None):
        return self.grey + self.contrast * (self.inner(x, sigma) - self.grey)


def test_faint_copies_are_caught_and_disjoint_memorizers_do_not_correlate(trained, tmp_path):
    """Two memorizers of disjoint sets of ten 16x16 digits whose samples come out at 30 %
    contrast: the plain l2 test can be fooled by the contrast, the normalised one is not; and
    their same-noise samples, different digits on one shared black background, agree little
    once normalised, although their raw cosine is high."""
    store = Artifacts.at(tmp_path / "art")
    runs = {}
    for split in "ab":
        run_dir = _train(store, "mnist", split, size=16)
        run = load_run(run_dir, store)
        train = run.images(run.train_indices)
        run.denoiser = Faint(EmpiricalPosterior(train), 0.3, -0.6)  # fades towards grey
        runs[split] = run
    cfg = GeneralizationConfig(sigmas=(0.05, 0.5), images=8, samples=32, steps=12, batch=32)
    table = run_generalization([runs["a"], runs["b"]], Artifacts.at(tmp_path / "out"), cfg)

    def value(metric):
        return table[table.metric == metric].value.to_numpy()

    assert np.all(value("memorized_fraction_normalised") >= 0.9)
    assert np.all(value("similarity_normalised_median") < 0.3)
    assert np.all(value("reproducibility") > value("similarity_normalised"))  # the background


def test_two_models_of_one_distribution_draw_the_same_samples(trained, tmp_path):
    """Generalizers: split a and b both learned the data distribution (here both are the same
    Gaussian posterior mean), so the same noise gives the same image: normalised cosine near 1."""
    store, runs = trained
    loaded = [load_run(runs[split], store) for split in "ab"]
    images = loaded[0].images(np.arange(len(loaded[0].prepared.images))).flatten(1).double()
    mean = images.mean(0)
    ev, q = torch.linalg.eigh(torch.cov(images.T) + 1e-4 * torch.eye(images.shape[1]))

    class Gaussian(torch.nn.Module):
        objective, channels, image_size, sigma_range = "edm", 1, 8, (0.002, 80.0)

        def forward(self, x, sigma, class_labels=None):
            y = x.flatten(1).double() - mean
            c = (y @ q) * (ev / (ev + float(sigma) ** 2))
            return (c @ q.T + mean).reshape(x.shape).to(x.dtype)

    for run in loaded:
        run.denoiser = Gaussian()
    cfg = GeneralizationConfig(sigmas=(0.05, 0.5), images=8, samples=16, steps=12, batch=16)
    table = run_generalization(loaded, Artifacts.at(tmp_path / "out"), cfg)
    assert np.all(table[table.metric == "similarity_normalised_median"].value > 0.99)
    assert np.all(table[table.metric == "memorized_fraction_normalised"].value <= 0.2)


def test_check_pair_refuses_other_data_and_resolutions():
    def fake(sha, size, name):
        run = FakeRun(None, run_id=name, pixels=torch.zeros(2, 1, size, size))
        run.data_sha256 = sha
        return run

    with pytest.raises(ProbeError, match="different resolutions"):
        G.check_pair(fake("s", 8, "a"), fake("s", 16, "b"))
    with pytest.raises(ProbeError, match="different data sets"):
        G.check_pair(fake("s", 8, "a"), fake("t", 8, "b"))
    G.check_pair(fake("s", 8, "a"), fake("s", 8, "b"))


# ------------------------------------------------------------------------------------ CLI


def _probe(store, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(store.root), *args])


def test_cli_bad_input_is_one_line_exit_2(trained, tmp_path):
    store, runs = trained
    cases = [
        ("generalization", str(runs["a"]), "--pair", str(runs["a"]), str(runs["digits"])),
        ("generalization", str(runs["a"]), "--sigmas", "0.1,0"),
        ("generalization", str(runs["a"]), "--fid-weights", str(tmp_path / "missing.pth")),
        ("sample", str(runs["a"]), "--sampler", "nope"),
    ]
    messages = ["different data sets", "positive", "not found", "nope"]
    for args, message in zip(cases, messages):
        result = _probe(store, *args)
        assert result.exit_code == 2, (args, result.stderr, result.exception)
        assert "Traceback" not in result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_cli_sample_and_dry_run(trained):
    store, runs = trained
    result = _probe(store, "sample", str(runs["a"]), "--n", "4", "--sampler", "ddpm",
                    "--steps", "3", "--seed", "7")
    assert result.exit_code == 0, (result.stderr, result.exception)
    run_id = runs["a"].name
    with h5py.File(store.probe_dir(run_id) / "samples.h5") as f:
        assert f["samples/images"].shape == (4, 1, 8, 8)
        assert f["samples/seeds"][:].tolist() == [[7, i] for i in range(4)]
        assert f.attrs["run_id"] == run_id and f["samples"].attrs["sampler"] == "ddpm"
    assert (store.probe_dir(run_id) / "samples.png").stat().st_size > 0
    dry = _probe(store, "generalization", str(runs["a"]), str(runs["b"]), "--dry-run")
    assert dry.exit_code == 0, (dry.stderr, dry.exception)
    assert "pairs: " + runs["b"].name in dry.stdout and "sigmas" in dry.stdout
    assert not (store.probe_dir(run_id) / H5).exists()
