"""`probe attention-locality`: streamed capture, the HDF5 layout, resume, the CLI, diffusers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from probe.artifacts import Artifacts
from probe.cli import cli
from probe.config import (
    AttentionConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    SubsetConfig,
    TrainConfig,
)
from probe.errors import ProbeError
from probe.formats import attention as fmt
from probe.formats.attention import Grid
from probe.metrics.locality import locality_metrics, metric_names, table_from_file
from probe.models import zoo
from probe.models.attention import Attention
from probe.models.denoiser import Denoiser
from probe.models.hooks import capture
from probe.probes import attention as probe
from probe.seeding import fixed_noise
from tests.helpers import FakeRun, assert_one_line_error, probe_one

SIGMAS = (0.5, 2.0)


# ------------------------------------------------------------------------------ helpers


def scrambled(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, so attention changes the output (adaLN-Zero starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def zoo_run(arch: str, size: int = 8, windows=(), seed: int = 0, **kw) -> FakeRun:
    torch.manual_seed(0)
    backbone = zoo.build(ModelConfig(arch=arch, image_size=size, channels=1, windows=windows))
    denoiser = Denoiser(scrambled(backbone, seed), "ddpm", 1, size).eval()
    pixels = torch.rand(6, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return FakeRun(denoiser, arch=arch, pixels=pixels, **kw)


def probe_run(run, store, settings, command=""):
    return probe_one(probe.PROBE, run, store, settings, command)


def cfg(**kw) -> AttentionConfig:
    return AttentionConfig(**{"sigmas": SIGMAS, "images": 3, **kw})


def datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


# ------------------------------------------------------------------ capture and the file


@pytest.mark.parametrize("arch,windows", [("dit-tiny/1", ()), ("dit-tiny/2", ()),
                                          ("dit-tiny/4", ()), ("dit-tiny/1", ("0-1:3",))])
def test_file_round_trips_what_the_model_computes(tmp_path, arch, windows):
    run = zoo_run(arch, windows=windows)
    store = Artifacts.at(tmp_path)
    path = probe_run(run, store, cfg(), command="probe test")
    patch = int(arch[-1])
    grid = Grid(8 // patch, 8 // patch, patch)
    data = datasets(path)
    idx = data["attention/images"]
    maps = data["attention/maps"]
    assert maps.dtype == np.float16 and maps.shape == (3, 2, 4, 4, grid.tokens, grid.tokens)
    # Every stored map is what capture() sees for the same fixed image and noise.
    x0 = run.images(idx)
    for si, sigma in enumerate(SIGMAS):
        noise = torch.stack([fixed_noise((1, 8, 8), 0, i, si) for i in idx])
        with torch.no_grad(), capture(run.denoiser.backbone, "blocks.*.attn.pattern") as cache:
            run.denoiser(x0 + sigma * noise, sigma)
        for layer in range(4):
            group = f"attention/layers/blocks.{layer}.attn.pattern"
            want = cache[f"blocks.{layer}.attn.pattern"].numpy()
            assert np.allclose(maps[:, si, layer], want, atol=1e-3)
            assert np.array_equal(data[f"{group}/maps"][:, si], maps[:, si, layer])
            metrics = locality_metrics(torch.from_numpy(want), grid)
            stored = data[f"{group}/metrics"][:, si]
            for m, name in enumerate(metric_names()):
                assert np.allclose(stored[..., m], metrics[name].numpy(), atol=1e-4)
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert (a["grid_height"], a["grid_width"], a["patch_size"]) == (grid.height, grid.width,
                                                                         patch)
        assert list(a["windows"]) == ([3, 3, 0, 0] if windows else [0] * 4)
        assert a["command"] == "probe test" and a["checkpoint_sha256"] == "0" * 64
        assert a["subset_sha256"] == "s" and a["dims"] == fmt.DIMS
        assert f["attention/maps"].compression == "gzip"
    assert np.allclose(maps.astype(np.float64).sum(-1), 1, atol=1e-2)
    if windows:  # a 3x3 window: nothing outside Chebyshev radius 1, so all mass within r=1
        far = grid.distances("chebyshev") > 1
        assert np.all(maps[:, :, :2][..., far] == 0)
        table = table_from_file(path)
        mass = table[(table.metric == "mass_r1") & (table.layer < 2)]["value"]
        assert np.allclose(mass, 1, atol=1e-6)


def test_capturing_does_not_change_the_output(tmp_path):
    run = zoo_run("dit-tiny/2", windows=("1:3",))
    x = run.pixels[:3] + 0.5 * torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        plain = run.denoiser(x, 0.5)
    layers = probe.discover(run.denoiser, (1, 8, 8))
    with h5py.File(tmp_path / "f.h5", "w") as f, \
            fmt.MapWriter(f, layers, 3, 1, "all", metric_names()) as writer:
        hook = probe.LocalityHook(writer, layers, "all", (1, 2, 4))
        hook.at(0, 0, 3)
        with torch.no_grad(), probe.hooks(run.denoiser.backbone, hook.fns):
            hooked = run.denoiser(x, 0.5)
        hook.finish()
    assert not torch.equal(plain, x)  # the attention matters for this model's output
    torch.testing.assert_close(hooked, plain, rtol=1e-4, atol=1e-5)


def test_store_modes_keep_the_mean_or_nothing_and_the_same_metrics(tmp_path):
    run = zoo_run("dit-tiny/2")
    full = datasets(probe_run(run, Artifacts.at(tmp_path / "all"), cfg()))
    mean = datasets(probe_run(run, Artifacts.at(tmp_path / "mean"),
                                    cfg(maps="mean-heads")))
    none = datasets(probe_run(run, Artifacts.at(tmp_path / "none"), cfg(maps="none")))
    assert mean["attention/maps"].shape[3] == 1
    assert np.allclose(mean["attention/maps"][:, :, :, 0],
                       full["attention/maps"].astype(np.float32).mean(3), atol=1e-3)
    assert not any(k.endswith("maps") for k in none)
    key = "attention/layers/blocks.2.attn.pattern/metrics"
    assert np.array_equal(full[key], none[key]) and np.array_equal(full[key], mean[key])


class TwoGrids(nn.Module):
    """A tiny backbone with attention at two resolutions (a UNet's shape, in miniature)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(1, 8, 2, 2)  # 8x8 pixels -> 4x4 tokens
        self.fine = Attention(8, 2, (4, 4))
        self.down = nn.Conv2d(8, 8, 2, 2)  # -> 2x2 tokens
        self.coarse = Attention(8, 2, (2, 2))
        self.out = nn.ConvTranspose2d(8, 1, 4, 4)

    def forward(self, x, noise_cond, class_labels=None):
        h = self.inp(x)
        b, c, hh, ww = h.shape
        h = h + self.fine(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hh, ww)
        h = self.down(h)
        b, c, hh, ww = h.shape
        h = h + self.coarse(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hh, ww)
        return self.out(h)


def test_layers_at_several_grids_get_their_own_datasets(tmp_path):
    torch.manual_seed(0)
    run = FakeRun(Denoiser(TwoGrids(), "ddpm", 1, 8).eval(), arch="two-grids")
    path = probe_run(run, Artifacts.at(tmp_path), cfg(queries=("3,3",)))
    attrs, _, layers = fmt.read_layers(path)
    assert [la["hook"] for la in layers] == ["fine.pattern", "coarse.pattern"]
    assert [la["grid"] for la in layers] == [Grid(4, 4, 2.0), Grid(2, 2, 4.0)]
    assert attrs["patch_size"] == -1 and list(attrs["strides_px"]) == [2.0, 4.0]
    data = datasets(path)
    assert "attention/maps" not in data
    assert data["attention/layers/fine.pattern/maps"].shape == (3, 2, 2, 16, 16)
    assert data["attention/layers/coarse.pattern/maps"].shape == (3, 2, 2, 4, 4)
    # Query 3,3 of the finest grid covers pixels 6-7, which the coarse grid holds at token 1,1.
    _, maps = fmt.query_maps(path, "3,3", 0)
    assert [m["query"] for m in maps] == [(3, 3), (1, 1)]
    assert [m["map"].shape for m in maps] == [(4, 4), (2, 2)]
    assert np.allclose([m["map"].sum() for m in maps], 1, atol=1e-2)


@pytest.mark.parametrize("arch,size", [("unet-xs", 8), ("udit-xs", 16), ("diffit-xs", 8)])
def test_other_zoo_families_with_attention(tmp_path, arch, size):
    if arch not in zoo.PRESETS:
        pytest.skip(f"{arch} is not in the zoo yet")
    run = zoo_run(arch, size=size)
    path = probe_run(run, Artifacts.at(tmp_path), cfg(images=2, sigmas=(1.0,)))
    attrs, _, layers = fmt.read_layers(path)
    assert layers and all(la["hook"].endswith((".pattern", ".pattern_full")) for la in layers)
    with h5py.File(path, "r") as f:
        for la in layers:
            maps = f[f"attention/layers/{la['hook']}/maps"][...].astype(np.float64)
            assert maps.shape[-1] == la["grid"].tokens
            assert np.allclose(maps.sum(-1), 1, atol=1e-2)
    assert set(table_from_file(path)["layer"]) == set(range(len(layers)))
    if arch == "diffit-xs":  # 4x4 partitions wherever the grid is larger, global elsewhere
        assert [la["partition"] for la in layers] == [4 if la["grid"].height > 4 else 0
                                                      for la in layers]
        assert attrs["partitions"] == [la["partition"] for la in layers]


def test_several_runs_figures_by_n_and_the_gap_correlation(tmp_path, monkeypatch):
    from scipy.stats import spearmanr

    from probe import pipeline
    from probe.report import attention_figures as figures
    from probe.report.summary import build_report

    runs = [zoo_run("dit-tiny/2", seed=s, run_id=f"r{n}", n=n)
            for s, n in ((0, 1000), (1, 10), (2, 100))]
    store = Artifacts.at(tmp_path)
    gaps = {"r10": 3.0, "r100": 1.0, "r1000": 2.0}  # another engineer's table, in miniature
    (tmp_path / "tables").mkdir()
    pd.DataFrame([{"run": r, "n": int(r[1:]), "split": "a", "arch": "dit-tiny/2", "sigma": s,
                   "metric": "psnr_gap", "value": g + s} for r, g in gaps.items()
                  for s in SIGMAS]).to_parquet(tmp_path / "tables" / "generalization.parquet")
    drawn = []
    real_save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: drawn.append(
        (stem.name, [ax.get_ylabel() for ax in fig.axes])) or real_save(fig, stem))
    table = pipeline.run_probe(probe.PROBE, runs, store, cfg(), log=lambda m: None).table
    assert not (tmp_path / "tables" / "locality_gap.parquet").exists()  # a join: the report's
    build_report(store)

    assert set(table["run"]) == set(gaps)
    maps = [labels for name, labels in drawn if name.startswith("maps_")]
    assert len(maps) == len(SIGMAS)  # one figure per noise level for the centre query
    assert len(maps[0]) == 3 * 4  # rows = runs, columns = layers
    assert [maps[0][4 * r] for r in range(3)] == ["N=10 a", "N=100 a", "N=1000 a"]  # rows by N
    assert any(name.startswith("locality_vs_n_") for name, _ in drawn)

    result = pd.read_parquet(tmp_path / "tables" / "locality_gap.parquet")
    row = result[(result.layer == 0) & (result.metric == "entropy") & result.sigma.isna()]
    per_run = table[(table.layer == 0) & (table.metric == "entropy")].groupby("run")["value"]
    runs_ = sorted(gaps)
    want = spearmanr([per_run.mean()[r] for r in runs_], [gaps[r] + np.mean(SIGMAS)
                                                          for r in runs_]).statistic
    assert row["runs"].item() == 3 and row["rho"].item() == pytest.approx(want)


# --------------------------------------------------------------------------- kill, resume


def test_a_killed_probe_leaves_no_file_and_the_rerun_equals_an_uninterrupted_one(
        tmp_path, monkeypatch):
    run = zoo_run("dit-tiny/2")
    settings = cfg(batch_mb=0.02)  # one image per forward pass: 6 passes
    assert probe.plan_run(run, settings).batch == 1
    reference = probe_run(run, Artifacts.at(tmp_path / "ref"), settings)

    store = Artifacts.at(tmp_path / "killed")
    real_call = probe.LocalityHook.__call__
    calls = {"n": 0}

    def dying(self, x, name):
        calls["n"] += 1
        if calls["n"] == 11:  # mid forward pass, after two passes of 4 layers finished
            raise KeyboardInterrupt
        return real_call(self, x, name)

    monkeypatch.setattr(probe.LocalityHook, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        probe_run(run, store, settings)
    final = store.probe_dir("fake") / fmt.FILENAME
    assert not final.exists() and final.with_name(final.name + ".partial").exists()

    calls["n"] = -10**9  # the rerun: count the layers it still has to compute
    probe_run(run, store, settings)
    assert final.exists() and not final.with_name(final.name + ".partial").exists()
    assert calls["n"] + 10**9 == 4 * (6 - 2)  # the two finished passes were skipped
    got, want = datasets(final), datasets(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key


def test_max_gb_is_refused_before_anything_is_written(tmp_path):
    run = zoo_run("dit-tiny/1")
    layers = probe.discover(run.denoiser, (1, 8, 8))
    size = probe.map_bytes(layers, 3, 2, "all")
    assert size == 3 * 2 * 4 * 4 * 64 * 64 * 2
    with pytest.raises(ProbeError, match="--max-gb"):
        probe_run(run, Artifacts.at(tmp_path), cfg(max_gb=size / 1e9 * 0.99))
    assert not (tmp_path / "probes").exists()
    probe.check_size(layers, 3, 2, "mean-heads", size / 1e9 * 0.99, "x")  # a quarter: fine


def test_queries_are_checked_against_the_grid():
    grids = [Grid(4, 4, 2.0), Grid(2, 2, 4.0)]
    assert fmt.query_positions("center", grids) == [(2, 2), (1, 1)]
    assert fmt.query_positions("0,3", grids) == [(0, 3), (0, 1)]
    with pytest.raises(ProbeError, match="outside the 4x4"):
        fmt.query_positions("4,0", grids)
    assert probe.parse_queries(["center; 1,2", "0,0"]) == ("center", "1,2", "0,0")
    with pytest.raises(ProbeError, match="bad query"):
        probe.parse_queries("1;2")


# ---------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained DiT on 8x8 digits."""
    from probe.train import train_run

    root = tmp_path_factory.mktemp("art")
    cfg_ = RunConfig(data=DataConfig(dataset="digits", size=8),
                     subsets=SubsetConfig(ns=(10,), test_size=32),
                     model=ModelConfig(arch="dit-tiny/2"),
                     train=TrainConfig(n=10, steps=2, batch=4, sample_grid=0,
                                       checkpoint_every=100, log_every=1))
    return root, train_run(cfg_, Artifacts.at(root), progress=False)


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(root), "attention-locality", *args])


def test_cli_end_to_end(trained, tmp_path):
    root, run_dir = trained
    art = tmp_path / "art"
    shutil.copytree(root, art)
    run_dir = art / "runs" / run_dir.name
    r = invoke(art, str(run_dir), "--images", "2", "--sigmas", "1", "--queries", "0,0;center")
    assert r.exit_code == 0, r.stderr
    assert "distance_px" in r.stdout and "radius90" in r.stdout
    probes = art / "probes" / run_dir.name
    table = pd.read_parquet(probes / "locality.parquet")
    assert set(table["layer"]) == {0, 1, 2, 3} and set(table["sigma"]) == {1.0}
    assert (table["n"] == 10).all() and (table["split"] == "a").all()
    assert (probes / "locality.csv").is_file()
    assert pd.read_parquet(art / "tables" / "locality.parquet").equals(table)
    assert not (art / "tables" / "locality_gap.parquet").exists()  # no PSNR-gap table: skipped
    figures = art / "figures" / "attention"
    for stem in ("maps_dit-tiny-2_q0-0_sigma1", "maps_dit-tiny-2_qcenter_sigma1",
                 "locality_vs_layer_dit-tiny-2", "locality_vs_n_dit-tiny-2"):
        assert (figures / f"{stem}.png").is_file() and (figures / f"{stem}.pdf").is_file()
    with h5py.File(probes / "attention.h5", "r") as f:
        assert json.loads(f.attrs["hooks"])[0] == "blocks.0.attn.pattern"
        assert f.attrs["run_id"] == run_dir.name and len(f.attrs["subset_sha256"]) == 64


def test_cli_dry_run_writes_nothing(trained, tmp_path):
    root, run_dir = trained
    r = invoke(tmp_path, str(run_dir), "--dry-run", "--store", "mean-heads")
    assert r.exit_code == 0, r.stderr
    assert 'maps = "mean-heads"' in r.stdout and "sigmas = [" in r.stdout
    assert not (tmp_path / "probes").exists()


def test_cli_bad_input_is_one_line(trained, tmp_path):
    root, run_dir = trained
    no_weights = tmp_path / "runs" / "no-weights"
    no_weights.mkdir(parents=True)
    shutil.copy(run_dir / "config.json", no_weights / "config.json")
    assert_one_line_error(invoke(tmp_path, str(no_weights)), "ema.safetensors")
    assert_one_line_error(invoke(tmp_path, str(run_dir), "--sigmas", "0.5,0"), "positive")
    assert_one_line_error(invoke(tmp_path, str(run_dir), "--sigmas", "-1"), "positive")
    assert_one_line_error(invoke(root, str(run_dir), "--queries", "4,0"), "outside the 4x4")
    assert_one_line_error(invoke(root, str(run_dir), "--max-gb", "1e-9"), "--max-gb")
    assert_one_line_error(invoke(tmp_path, str(tmp_path / "nope")), "run not found")
    assert_one_line_error(invoke(tmp_path), "no finished runs")
    assert not (root / "probes").exists()


# ------------------------------------------------------------------------------ diffusers


def test_diffusers_dit_folder_is_probed_and_hooking_keeps_its_output(trained, tmp_path):
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from probe.models.diffusers_local import load_backbone

    root, _ = trained
    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
                                  out_channels=2, num_layers=2, sample_size=8, patch_size=2,
                                  norm_num_groups=1, num_embeds_ada_norm=10)
    scrambled(model)
    folder = tmp_path / "my-dit"
    model.save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    labels = torch.tensor([10, 10])  # the null class
    with torch.no_grad():
        want = model(x, t, labels).sample
        backbone, info = load_backbone(folder)
        assert torch.allclose(backbone(x, t), want, atol=1e-5)
        with capture(backbone, "*.pattern"):
            assert torch.allclose(backbone(x, t), want, atol=1e-5)
    assert info["image_size"] == 8 and info["channels"] == 1

    art = tmp_path / "art"
    shutil.copytree(root / "data", art / "data")
    r = invoke(art, "--diffusers", str(folder), "--dataset", "digits", "--size", "8",
               "--images", "2", "--sigmas", "1", "--no-figures")
    assert r.exit_code == 0, r.stderr
    (probes,) = (art / "probes").iterdir()
    assert probes.name.startswith("my-dit-")  # folder name + weights hash: unique
    path = probes / "attention.h5"
    attrs, _, layers = fmt.read_layers(path)
    assert [la["hook"] for la in layers] == [
        f"transformer.transformer_blocks.{i}.attn1.processor.pattern" for i in range(2)]
    assert attrs["arch"] == "diffusers:DiTTransformer2DModel" and attrs["n"] == ""
    assert layers[0]["grid"] == Grid(4, 4, 2.0)
    table = pd.read_parquet(probes / "locality.parquet")
    assert table["n"].isna().all() and len(table) == 2 * 2 * len(metric_names())
    r = invoke(art, "--diffusers", str(folder), "--dataset", "digits", "--size", "16")
    assert_one_line_error(r, "8px")


def test_diffusers_unet_folder(trained, tmp_path):
    pytest.importorskip("probe.models.unet")
    from diffusers import DDPMScheduler, UNet2DModel

    from probe.models.diffusers_local import load_backbone

    root, _ = trained
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                        attention_head_dim=8,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    folder = tmp_path / "my-unet"
    model.save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        want = model(x, t).sample
        backbone, _ = load_backbone(folder)
        with capture(backbone, "*.pattern") as cache:
            assert torch.allclose(backbone(x, t), want, atol=1e-5)
    assert cache and all(v.shape[-1] == 16 for v in cache.values())  # the 4x4 level

    art = tmp_path / "art"
    shutil.copytree(root / "data", art / "data")
    r = invoke(art, "--diffusers", str(folder), "--dataset", "digits", "--size", "8",
               "--images", "2", "--sigmas", "1", "--no-figures", "--queries", "3,3")
    assert r.exit_code == 0, r.stderr
    (probes,) = (art / "probes").iterdir()
    _, _, layers = fmt.read_layers(probes / "attention.h5")
    assert all(la["grid"] == Grid(4, 4, 2.0) for la in layers) and len(layers) == len(cache)
