"""Jacobian eigenbases: analytic denoisers with known answers, full vs lanczos vs finite
differences on a small DiT, bad input, resume, and the command end to end on tiny trained runs."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy.linalg import subspace_angles

from probe.artifacts import Artifacts
from probe.cli import cli
from probe.config import (
    DataConfig,
    JacobianConfig,
    ModelConfig,
    RunConfig,
    SubsetConfig,
    TrainConfig,
)
from probe.data.synthetic import disk_params, disk_tangent_basis
from probe.errors import ProbeError
from probe.formats.jacobian import read_groups
from probe.metrics import basis
from probe.metrics.basis import subspace_agreement
from probe.models import zoo
from probe.models.attention import set_backend
from probe.models.denoiser import Denoiser
from probe.probes import jacobian as jac
from probe.runs import load_run
from probe.train import train_run
from tests.helpers import assert_one_line_error, probe_one, randomize


def linear(matrix: np.ndarray):
    """D(y) = A y, row-wise on a batch [B, d] as denoisers are."""
    a = torch.from_numpy(matrix)
    return lambda v: v @ a.T


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def point(d: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(d))


# ---------------------------------------------------------------------------- analytic cases


@pytest.mark.parametrize("method", ["full", "lanczos"])
def test_symmetric_linear_denoiser_gives_its_eigenvalues(method):
    d, k = 40, 6
    lam = np.linspace(2.0, -1.0, d)  # distinct, some negative: descending order is algebraic
    q = random_orthogonal(d, 1)
    basis = jac.analyse(linear(q @ np.diag(lam) @ q.T), point(d), k, method, tol=1e-12,
                        probes=16)
    np.testing.assert_allclose(basis.eigenvalues[:k], lam[:k], rtol=1e-10, atol=1e-12)
    assert subspace_agreement(basis.eigenvectors, q[:, :k]) == pytest.approx(1, abs=1e-10)
    svals = np.sort(np.abs(lam))[::-1]
    np.testing.assert_allclose(basis.singular_values[:k], svals[:k], rtol=1e-10)
    assert basis.linearity == pytest.approx(0, abs=1e-12)  # D(y) = A y exactly
    if method == "full":
        np.testing.assert_allclose(basis.eigenvalues, lam, atol=1e-12)
        assert basis.trace == pytest.approx(lam.sum(), abs=1e-10)
        assert basis.asymmetry == pytest.approx(0, abs=1e-12)
        assert basis.estimator == "exact"
    else:  # Hutchinson: J z = J^T z for a symmetric J, so the asymmetry estimate is exact too
        assert basis.asymmetry == pytest.approx(0, abs=1e-12)
        assert basis.estimator == "hutchinson" and basis.probes == 16


@pytest.mark.parametrize("method", ["full", "lanczos"])
def test_nonsymmetric_linear_denoiser_gives_the_stated_asymmetry(method):
    d, a_norm, b_norm = 60, 3.0, 1.0
    rng = np.random.default_rng(2)
    s = rng.standard_normal((d, d))
    s = (s + s.T) * a_norm / np.linalg.norm(s + s.T)  # symmetric, ||S||_F = 3
    kk = rng.standard_normal((d, d))
    kk = (kk - kk.T) * b_norm / np.linalg.norm(kk - kk.T)  # antisymmetric, ||K||_F = 1
    # S and K are Frobenius-orthogonal: ||S + K|| = sqrt(a^2 + b^2), ||A - A^T|| = 2 b.
    expected = 2 * b_norm / np.hypot(a_norm, b_norm)
    basis = jac.analyse(linear(s + kk), point(d), 4, method, probes=400)
    # Hutchinson's relative error is about sqrt(2 / (probes * effective rank)): well under 5 %.
    tolerance = 1e-10 if method == "full" else 0.05 * expected
    assert basis.asymmetry == pytest.approx(expected, abs=tolerance)
    # eigenvalues are those of the symmetric part, whatever K adds
    np.testing.assert_allclose(basis.eigenvalues[:4], np.sort(np.linalg.eigvalsh(s))[::-1][:4],
                               rtol=1e-6)


@pytest.mark.parametrize("method", ["full", "lanczos"])
def test_disk_tangent_projection_has_five_unit_eigenvalues(method):
    size = 16
    u = disk_tangent_basis(disk_params(1, size, seed=3)[0], size)  # [256, 5] orthonormal
    basis = jac.analyse(linear(u @ u.T), point(size * size), 8, method, tol=1e-12)
    np.testing.assert_allclose(basis.eigenvalues[:5], 1, atol=1e-9)
    np.testing.assert_allclose(basis.eigenvalues[5:], 0, atol=1e-9)
    np.testing.assert_allclose(basis.singular_values[:5], 1, atol=1e-9)
    assert subspace_agreement(basis.eigenvectors[:, :5], u) == pytest.approx(1, abs=1e-9)
    if method == "full":
        assert basis.trace == pytest.approx(5, abs=1e-9)
        assert len(basis.eigenvalues) == size * size


# ------------------------------------------------------------------------------- a small DiT


@pytest.fixture(scope="module")
def small_dit():
    """A 4-layer DiT on 8x8 images (d = 64), float64, explicit attention, every weight random
    (adaLN-Zero's zeros too) so the Jacobian is far from the identity."""
    backbone = randomize(zoo.build(ModelConfig(arch="dit-tiny/2", image_size=8, channels=1)))
    denoiser = Denoiser(backbone, "ddpm", 1, 8).double().eval().requires_grad_(False)
    set_backend(denoiser, "explicit")
    return jac.flat_denoiser(denoiser, 0.5, (1, 8, 8)), point(64, 5)


def test_full_matches_central_finite_differences_on_a_dit(small_dit):
    f, y = small_dit
    fast, value = jac.full_jacobian(f, y, chunk=7)  # a chunk that does not divide d
    torch.testing.assert_close(value, f(y))
    h = 1e-5
    with torch.no_grad():
        fd = torch.stack([(f(y + h * e) - f(y - h * e)) / (2 * h)
                          for e in torch.eye(64, dtype=y.dtype)], dim=1)
    assert (fast - torch.eye(64, dtype=y.dtype)).abs().max() > 0.1  # not a trivial J
    torch.testing.assert_close(fast, fd, rtol=0, atol=1e-7)


def test_full_and_lanczos_agree_on_a_dit(small_dit):
    f, y = small_dit
    k = 6
    full = jac.analyse(f, y, k, "full")
    lanczos = jac.analyse(f, y, k, "lanczos", tol=1e-10, probes=8)
    np.testing.assert_allclose(lanczos.eigenvalues, full.eigenvalues[:k], rtol=1e-4)
    np.testing.assert_allclose(lanczos.singular_values, full.singular_values[:k], rtol=1e-4)
    assert np.cos(subspace_angles(full.eigenvectors, lanczos.eigenvectors)).min() > 1 - 1e-6
    assert np.cos(subspace_angles(full.left_singular_vectors,
                                  lanczos.left_singular_vectors)).min() > 1 - 1e-6
    assert lanczos.linearity == pytest.approx(full.linearity, rel=1e-8)  # J y both ways


# ------------------------------------------------------------------------ method and memory


def test_chunk_size_follows_free_memory(small_dit):
    f, y = small_dit
    per_row = jac.saved_bytes(f, y) * jac.BACKWARD_OVERHEAD
    assert jac.chunk_size(f, y, available=0) == 1
    assert jac.chunk_size(f, y, available=10 * per_row) == int(10 * jac.MEMORY_FRACTION)
    assert jac.chunk_size(f, y, available=2**50) == jac.ROWS_PER_THREAD  # one thread here


def test_method_resolution_and_bad_input():
    big = 2**40
    assert jac.resolve_method("auto", 1024, 64, available=big) == "full"
    assert jac.resolve_method("auto", 64 * jac.AUTO_FULL_ROWS_PER_K + 1, 64,
                              available=big) == "lanczos"
    assert jac.resolve_method("auto", 1024, 64, available=1 << 20) == "lanczos"  # no room
    with pytest.raises(ProbeError, match="lanczos"):
        jac.resolve_method("full", 4096, 8, available=1 << 30)  # needs 1 GiB, may use half
    for k in (64, 65):
        with pytest.raises(ProbeError, match="--k"):
            jac.resolve_method("lanczos", 64, k)


# ---------------------------------------------------------------- tiny trained runs, the CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = Artifacts.at(tmp_path_factory.mktemp("art"))
    dirs = []
    for split in ("a", "b"):
        cfg = RunConfig(data=DataConfig(dataset="mnist", size=8),
                        subsets=SubsetConfig(ns=(10,), test_size=16),
                        model=ModelConfig(arch="dit-tiny/4"),
                        train=TrainConfig(n=10, split=split, steps=3, batch=5, lr=1e-2,
                                          sample_grid=0, checkpoint_every=3, log_every=3))
        dirs.append(train_run(cfg, store, progress=False, log=lambda m: None))
    return store, [str(d) for d in dirs]


def invoke(store, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(store.root), "jacobian-basis", *args])


def test_command_writes_bases_metrics_and_figures(runs):
    store, dirs = runs
    result = invoke(store, *dirs, "--sigmas", "0.1,0.5", "--images", "2", "--k", "8",
                    "--method", "full")
    assert result.exit_code == 0, result.stderr + str(result.exception)
    run = load_run(dirs[0], store)
    with h5py.File(store.probe_file(run.run_id, jac.PROBE.filename), "r") as f:
        assert f.attrs["checkpoint_sha256"] == run.checkpoint_sha256
        assert f.attrs["command"].startswith("probe")
        groups = [(i, s) for i in f["jacobian"] for s in f["jacobian"][i]]
        assert len(groups) == 4
        g = f["jacobian"][groups[0][0]]["0.5"]
        assert g["eigenvalues"].shape == (64,) and g["eigenvectors"].shape == (64, 8)
        assert g["left_singular_vectors"].shape == (64, 8) and g["clean"].shape == (1, 8, 8)
        evals = g["eigenvalues"][()]
        assert np.all(np.diff(evals) <= 0)
        assert g.attrs["trace"] == pytest.approx(evals.sum(), rel=1e-5)  # tr J = tr (J+J^T)/2
        noisy = torch.from_numpy(g["noisy"][()])[None]
        with torch.no_grad():  # the stored D(y) is the run's denoiser at the stored y
            expect = run.denoiser(noisy, 0.5)[0].numpy()
        np.testing.assert_allclose(g["denoised"][()], expect, atol=1e-5)
    table = pd.read_parquet(store.tables_dir / "basis.parquet")
    per_run = table[table["peer"] == ""]
    assert len(per_run.groupby(["run", "image", "sigma"])) == 2 * 2 * 2
    agreement = table[table["metric"] == "agreement_split"]
    assert len(agreement) == 2 * 4 and set(agreement["peer"]) == set(table["run"])
    assert ((agreement["value"] > 0) & (agreement["value"] <= 1 + 1e-9)).all()
    # the streamed memorization signature equals the direct computation, group by group
    train = run.images(run.train_indices).reshape(len(run.train_indices), -1).double().numpy()
    for g in read_groups(store.probe_file(run.run_id, jac.PROBE.filename)):
        top = g["eigenvectors"][:, :basis.MEMORIZATION_TOP].astype(np.float64)
        mine = table[(table["run"] == run.run_id) & (table["image"] == g["image"])
                     & (table["sigma"] == g["sigma"])].set_index("metric")["value"]
        assert mine["memorization_cos"] == pytest.approx(
            basis.memorization_signature(top, [train]))
        assert mine["memorization_cos_centred"] == pytest.approx(
            basis.memorization_signature(top, [train], train.mean(0)))
    figures = store.figures_dir / "jacobian"
    assert (figures / "spectra.png").is_file() and (figures / "harmonicity.png").is_file()
    assert len(list(figures.glob("eigenvectors_*.png"))) == 4


def test_lanczos_on_a_trained_run_matches_full(runs, tmp_path):
    store, dirs = runs
    run = load_run(dirs[0], store)
    results = {}
    for method in ("full", "lanczos"):
        other = Artifacts.at(tmp_path / method)
        probe_one(jac.PROBE, run, other, JacobianConfig(sigmas=(0.5,), images=1, method=method,
                                                        k=4, probes=8))
        results[method] = next(read_groups(other.probe_file(run.run_id, jac.PROBE.filename)))
    full, lanczos = results["full"], results["lanczos"]
    assert lanczos["estimator"] == "hutchinson" and lanczos["eigenvalues"].shape == (4,)
    np.testing.assert_allclose(lanczos["eigenvalues"], full["eigenvalues"][:4], rtol=1e-4)
    assert subspace_agreement(full["eigenvectors"], lanczos["eigenvectors"]) > 1 - 1e-4


def test_bad_input_is_one_line(runs, monkeypatch):
    store, dirs = runs
    assert_one_line_error(invoke(store, dirs[0], "--k", "64"), "--k 64", "64")
    assert_one_line_error(invoke(store, dirs[0], "--sigmas", "0.1,0"), "positive")
    assert_one_line_error(invoke(store, dirs[0], "--sigmas", "-0.5"), "positive")
    assert_one_line_error(invoke(store, "no-such-run"), "run not found")
    monkeypatch.setattr(jac, "available_memory", lambda: 1 << 10)  # 1 KiB free
    assert_one_line_error(invoke(store, dirs[0], "--method", "full", "--k", "4"),
                          "lanczos", "GiB")


def test_dry_run_prints_the_plan_and_pairs(runs):
    store, dirs = runs
    result = invoke(store, *dirs, "--k", "8", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "method = full" in result.stdout and "pair agreement_split" in result.stdout
    for d in dirs:  # nothing computed, nothing written
        assert not list(store.probe_dir(d.rsplit("/", 1)[-1]).glob("*.partial"))


def test_killed_probe_resumes_at_the_next_group(runs, tmp_path, monkeypatch):
    store, dirs = runs
    run = load_run(dirs[0], store)
    out = Artifacts.at(tmp_path)
    cfg = JacobianConfig(sigmas=(0.1, 0.3, 0.5), images=1, method="full", k=4)
    calls = []
    real = jac.analyse

    def dies_after_one(f, y, *args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed while computing the second group
        calls.append(y.clone())
        return real(f, y, *args, **kwargs)

    monkeypatch.setattr(jac, "analyse", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        probe_one(jac.PROBE, run, out, cfg)
    path = out.probe_file(run.run_id, jac.PROBE.filename)
    assert not path.exists() and path.with_name(path.name + ".partial").exists()

    def counting(f, y, *args, **kwargs):
        calls.append(y.clone())
        return real(f, y, *args, **kwargs)

    monkeypatch.setattr(jac, "analyse", counting)
    probe_one(jac.PROBE, run, out, cfg)
    assert len(calls) == 3  # 1 before the kill + the 2 groups left, none recomputed
    groups = list(read_groups(path))
    assert [g["sigma"] for g in groups] == [0.1, 0.3, 0.5]
    for y, g in zip(calls, groups):  # each group was computed once, at its own y
        np.testing.assert_allclose(y.numpy(), g["noisy"].reshape(-1), atol=1e-6)
    probe_one(jac.PROBE, run, out, cfg)  # finished file: nothing recomputed
    assert len(calls) == 3
