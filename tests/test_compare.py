"""Baselines as runs and `probe compare`, end to end on the embedded 8x8 digits.

Known answers: the ideal denoiser's samples are training images (memorized fraction 1.0
through `probe generalization`); `probe jacobian-basis` on the Wiener denoiser returns the
data's principal components with eigenvalues lambda / (lambda + s^2); a baseline compared with
its own theory agrees exactly (r^2 = 1 in one step and along trajectories) and the calibration
finds its patch size. Bad input is one line with exit code 2.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probe import artifacts, pipeline
from probe.artifacts import Artifacts
from probe.baselines.run import BaselineRun
from probe.cli import cli
from probe.config import (
    CompareConfig,
    DataConfig,
    GeneralizationConfig,
    JacobianConfig,
    ModelConfig,
    RunConfig,
    SubsetConfig,
    TrainConfig,
)
from probe.formats import compare as fmt
from probe.formats.jacobian import read_groups
from probe.metrics.compare import COLUMNS
from probe.runs import Run, load_run
from probe.train import train_run

DIGITS = ["--dataset", "digits", "--size", "8"]
QUIET = lambda msg: None  # noqa: E731


def _cli(store, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(store.root), *args])


def _baseline(store, *args) -> str:
    result = _cli(store, "baseline", *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("run: ")]
    return line[5:]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Artifacts.at(tmp_path_factory.mktemp("baselines"))


@pytest.fixture(scope="module")
def baselines(store):
    return {"ideal": _baseline(store, "ideal", *DIGITS, "--n", "10"),
            "wiener": _baseline(store, "wiener", *DIGITS, "--n", "300"),
            "els": _baseline(store, "els", *DIGITS, "--n", "30", "--patch", "3")}


def test_a_baseline_run_directory_loads_as_a_run(store, baselines):
    run = load_run(baselines["ideal"], store)
    assert isinstance(run, BaselineRun) and isinstance(run, Run)
    assert (run.arch, run.n, run.split, run.image_shape) == ("ideal", 10, "a", (1, 8, 8))
    assert not (store.run_dir(run.run_id) / artifacts.EMA_WEIGHTS).exists()
    assert len(run.checkpoint_sha256) == 64 and len(run.test_indices) > 0
    wiener = load_run(baselines["wiener"], store)
    assert (store.run_dir(wiener.run_id) / "statistics.safetensors").is_file()
    x = run.images(run.train_indices[:3])
    assert torch.allclose(run.denoiser(x + 0.01 * torch.randn_like(x), 0.01), x, atol=1e-4)
    result = _cli(store, "sample", baselines["els"], "--n", "4", "--steps", "5")
    assert result.exit_code == 0, result.stderr


def test_ideal_samples_are_training_images(store, baselines):
    run = load_run(baselines["ideal"], store)
    cfg = GeneralizationConfig(sigmas=(0.05, 0.5), images=8, samples=8, steps=12, batch=8)
    table = pipeline.run_probe("generalization", [run], store, cfg, log=QUIET,
                               figures=False).table
    value = table.loc[table.metric == "memorized_fraction", "value"].item()
    assert value == 1.0


def test_jacobian_basis_of_wiener_is_the_principal_components(store, baselines):
    run = load_run(baselines["wiener"], store)
    cfg = JacobianConfig(sigmas=(0.1, 0.5), images=2, method="full", k=6)
    result = pipeline.run_probe("jacobian-basis", [run], store, cfg, log=QUIET, figures=False)
    x = run.images(run.train_indices).double().flatten(1)
    cov = (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)
    lam, pcs = torch.linalg.eigh(cov)
    lam, pcs = lam.flip(0).numpy(), pcs.flip(1).numpy()
    groups = list(read_groups(result.files[0]))
    assert len(groups) == 4
    for g in groups:
        s = g["sigma"]
        assert np.allclose(g["eigenvalues"], lam / (lam + s * s), atol=1e-4)
        cos = np.abs(np.sum(g["eigenvectors"][:, :4] * pcs[:, :4], 0))
        assert np.all(cos > 0.99), cos
        assert g["asymmetry"] < 1e-4  # symmetric; affine (mean mu), so not bias-free


def test_a_baseline_compared_with_its_own_theory_agrees_exactly(store, baselines):
    els = load_run(baselines["els"], store)
    cfg = CompareConfig(theories=("els",), sigmas=(0.1, 0.5, 2.0), images=4, samples=3,
                        steps=6, patches=(1, 3, 5), calibration_images=3)
    result = pipeline.run_probe("compare", [els], store, cfg, log=QUIET)
    table = result.table
    assert list(table.columns) == list(COLUMNS)
    one = table[table.metric == "onestep_r2"]
    assert len(one) == 6 and np.allclose(one.value, 1, atol=1e-5)
    assert np.allclose(table.loc[table.metric == "patch", "value"], 3)
    traj = table.loc[table.metric == "trajectory_r2", "value"].item()
    assert traj == pytest.approx(1, abs=1e-4)
    steps = table[table.metric == "step_r2"]
    assert len(steps) == 6 and np.allclose(steps.value, 1, atol=1e-4)
    names = {p.name for p in result.figures}
    assert any(n.endswith("-samples.png") for n in names) and "r2_vs_n.png" in names
    with h5py.File(result.files[0], "r") as f:
        assert list(f[fmt.key(fmt.CALIBRATION, "els")]["best"][:]) == [3, 3, 3]


def _tiny_trained(store, dataset="digits", size=8, **data):
    cfg = RunConfig(data=DataConfig(dataset=dataset, size=size, **data),
                    subsets=SubsetConfig(ns=(10,), test_size=24),
                    model=ModelConfig(arch="bf-unet-xs"),
                    train=TrainConfig(n=10, split="a", steps=2, batch=4, sample_grid=0,
                                      checkpoint_every=100, objective="edm"))
    return train_run(cfg, store, progress=False, log=QUIET)


def test_compare_a_trained_run_through_the_cli(store, baselines):
    run_dir = _tiny_trained(store)
    result = _cli(store, "compare", str(run_dir), "--to", f"ideal,wiener,els,{baselines['ideal']}",
                  "--sigmas", "0.2,1", "--images", "3", "--samples", "2", "--steps", "4",
                  "--patches", "1,3")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "trajectory r2" in result.stdout and "table: " in result.stdout
    table = pipeline.PROBES["compare"].tidy([], [store.probe_file(run_dir.name,
                                                                   artifacts.COMPARE_H5)], None)
    ideal_run = load_run(baselines["ideal"], store).run_id
    assert set(table.theory) == {"ideal", "wiener", "els", ideal_run}
    # the ideal theory of the run's subset and the ideal run on the same subset are one model
    a = table[(table.theory == "ideal") & (table.metric == "trajectory_r2")].value.item()
    b = table[(table.theory == ideal_run) & (table.metric == "trajectory_r2")].value.item()
    assert a == pytest.approx(b, abs=1e-5)


def test_bad_input_is_one_line_exit_2(store, baselines, tmp_path, monkeypatch):
    other = _tiny_trained(Artifacts.at(tmp_path), "disks", 8, count=100)
    cases = [
        (("baseline", "els", *DIGITS, "--n", "10", "--patch", "4"), "odd"),
        (("baseline", "ls", *DIGITS, "--n", "10", "--patch", "9"), "larger than the 8x8"),
        (("baseline", "ideal"), "--from RUN"),
        (("compare", baselines["ideal"], "--to", str(other)), "different data"),
        (("compare", baselines["ideal"], "--to", "els", "--patch", "4"), "odd"),
    ]
    for args, message in cases:
        result = _cli(store, *args)
        assert result.exit_code == 2, (args, result.stderr, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    monkeypatch.setattr("probe.baselines.run.available_memory", lambda: 1000)
    result = _cli(store, "baseline", "ideal", *DIGITS, "--n", "100")
    assert result.exit_code == 2 and "--chunk" in result.stderr
    assert _cli(store, "baseline", "ideal", *DIGITS, "--n", "100", "--chunk", "16"
                ).exit_code == 0
