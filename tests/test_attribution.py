"""`probe attribution`: receptive fields, head importance and influence against known answers."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from torch import nn

from probe.artifacts import Artifacts
from probe.cli import cli
from probe.config import DataConfig, ModelConfig, RunConfig, SubsetConfig, TrainConfig
from probe.errors import ProbeError
from probe.metrics import attribution as metrics
from probe.models.denoiser import Denoiser
from probe.models.dit import DiT
from probe.models.hooks import hooks
from probe.probes import attribution as attr
from tests.helpers import assert_one_line_error


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The test machine is shared: one intra-op thread is several times faster than two here.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- known denoisers


def gaussian_kernel(width: float, radius: int) -> np.ndarray:
    g = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * width**2))
    k = np.outer(g, g)
    return k / k.sum()


class BlurResidual(nn.Module):
    """Backbone of a blind Denoiser whose D(y) = y - (y - blur(y)) = blur(y) (zero padding)."""

    def __init__(self, kernel: np.ndarray):
        super().__init__()
        self.register_buffer("kernel", torch.tensor(kernel, dtype=torch.float32)[None, None])

    def forward(self, x, noise_cond, class_labels=None):
        return x - F.conv2d(x, self.kernel, padding=self.kernel.shape[-1] // 2)


def analytic_radius(kernel: np.ndarray, fraction: float) -> float:
    """Brute force over every disk through a kernel offset: the smallest one holding `fraction`
    of the kernel's absolute mass."""
    r = kernel.shape[0] // 2
    a, b = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    sq = a**2 + b**2
    for s in sorted(set(sq.ravel().tolist())):
        if np.abs(kernel)[sq <= s].sum() >= fraction * np.abs(kernel).sum() * (1 - 1e-9):
            return float(np.sqrt(s))
    raise AssertionError("unreachable")


def analytic_mean_distance(kernel: np.ndarray) -> float:
    r = kernel.shape[0] // 2
    a, b = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    return float((np.abs(kernel) * np.sqrt(a**2 + b**2)).sum() / np.abs(kernel).sum())


def perturbed_dit(seed: int = 0, **kwargs) -> Denoiser:
    """A random DiT whose adaLN-Zero / final-layer zeros are replaced by small random weights,
    so that every block (and the output) depends on its input."""
    torch.manual_seed(seed)
    backbone = DiT(in_channels=1, mlp_ratio=2.0, **kwargs)
    with torch.no_grad():
        for p in backbone.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.1)
    return Denoiser(backbone, "edm", 1, kwargs["image_size"]).eval().requires_grad_(False)


# --------------------------------------------------------------------------- receptive fields


@pytest.mark.parametrize("width,method", [(1.0, "saliency"), (2.0, "saliency"),
                                          (1.5, "integrated-gradients")])
def test_gaussian_blur_gives_the_analytic_radius(width, method):
    radius, size = int(np.ceil(3 * width)), 19
    kernel = gaussian_kernel(width, radius)
    denoiser = Denoiser(BlurResidual(kernel), "blind", 1, size).eval()
    # Saliency is the kernel for any input; IG is input x kernel, so give it a constant image.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, size, size, generator=g) if method == "saliency" else \
        torch.full((1, size, size), 0.7)
    center = (size // 2, size // 2)
    maps = attr.receptive_field_maps(denoiser, x, 0.3, [center], method, ig_steps=8)
    mass = metrics.channel_mass(maps)  # [pixel, H, W]
    c = size // 2
    expected = np.zeros((size, size))
    expected[c - radius:c + radius + 1, c - radius:c + radius + 1] = kernel
    scale = 0.7 if method != "saliency" else 1.0
    np.testing.assert_allclose(mass[0], scale * expected, atol=1e-6)
    summary = metrics.summarize(mass[None], [center])
    assert summary["radius_50"][0, 0] == pytest.approx(analytic_radius(kernel, 0.5))
    assert summary["radius_90"][0, 0] == pytest.approx(analytic_radius(kernel, 0.9))
    assert summary["mean_distance"][0, 0] == pytest.approx(analytic_mean_distance(kernel),
                                                           rel=1e-5)
    assert 0 < summary["radius_50"][0, 0] < summary["radius_90"][0, 0] <= radius * np.sqrt(2)


def test_mass_radius_of_point_masses():
    mass = np.zeros((5, 7))
    mass[2, 3] = 3.0  # the centre
    mass[2, 6] = -1.0  # distance 3, negative: |.| counts
    assert metrics.mass_radius(mass, (2, 3), 0.5) == 0
    assert metrics.mass_radius(mass, (2, 3), 0.9) == 3
    assert metrics.mean_distance(mass, (2, 3)) == pytest.approx(3 / 4)
    assert np.isnan(metrics.mass_radius(np.zeros((3, 3)), (1, 1), 0.5))


def test_windowed_dit_has_no_attribution_beyond_its_reach():
    layers, window, size = 2, 3, 12
    reach = layers * (window // 2)  # tokens = pixels at patch 1
    denoiser = perturbed_dit(image_size=size, patch=1, width=32, depth=layers, heads=2,
                             windows=(window,) * layers)
    pixels = attr.parse_pixels(["center", "0,0", "9,3"], size, size)
    x = torch.randn(1, size, size, generator=torch.Generator().manual_seed(1))
    maps = attr.receptive_field_maps(denoiser, x, 0.5, pixels, batch=2)
    mass = metrics.channel_mass(maps)
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    for p, (y, x0) in enumerate(pixels):
        chebyshev = np.maximum(abs(ys - y), abs(xs - x0))
        assert (mass[p][chebyshev > reach] == 0).all()
        assert (mass[p][chebyshev == reach] > 0).any()  # the reach is attained, not smaller
    summary = metrics.summarize(mass[None], pixels)
    assert (summary["radius_90"] <= reach * np.sqrt(2) + 1e-9).all()


def test_parse_pixels():
    assert attr.parse_pixels(["center"], 8, 8) == [(4, 4)]
    assert attr.parse_pixels(["3,1 center", "3,1"], 8, 8) == [(1, 3), (4, 4)]  # x,y -> (y, x)
    grid = attr.parse_pixels(["grid"], 12, 12)
    assert len(grid) == 9 and {y for y, _ in grid} == {2, 6, 10}
    for bad in (["8,0"], ["0,-1"], ["nowhere"]):
        with pytest.raises(ProbeError):
            attr.parse_pixels(bad, 8, 8)


# ---------------------------------------------------------------------------- head importance


def zero_head_columns(denoiser: Denoiser, layer: int, head: int) -> None:
    attn = denoiser.backbone.blocks[layer].attn
    d = attn.proj.in_features // attn.heads
    with torch.no_grad():
        attn.proj.weight[:, head * d:(head + 1) * d] = 0


def head_inputs(seed: int = 2, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 1, size, size, generator=g) * 2 - 1, torch.randn(3, 1, size, size,
                                                                           generator=g)


def test_ablating_a_head_with_zeroed_projection_changes_nothing():
    denoiser = perturbed_dit(image_size=8, patch=2, width=32, depth=2, heads=4)
    zero_head_columns(denoiser, 1, 2)
    x0, noise = head_inputs()
    names, importance, base = attr.head_importance(denoiser, x0, noise, 0.5)
    assert names == ["blocks.0.attn.heads_out", "blocks.1.attn.heads_out"]
    assert importance.shape == (3, 2, 4)
    # Zero up to float32 rounding (ablations run in batches of another size than the base).
    tol = 1e-6 * base.max()
    assert (np.abs(importance[:, 1, 2]) <= tol).all()
    assert (np.abs(importance[:, [0, 1], [0, 0]]) > 100 * tol).all()  # live heads do matter


def test_one_live_head_ranks_first_and_matches_a_manual_ablation():
    denoiser = perturbed_dit(image_size=8, patch=2, width=32, depth=2, heads=4, seed=3)
    live = (1, 3)
    for layer in range(2):
        for head in range(4):
            if (layer, head) != live:
                zero_head_columns(denoiser, layer, head)
    x0, noise = head_inputs()
    _, importance, base = attr.head_importance(denoiser, x0, noise, 0.5, batch=6)
    mean = np.abs(importance.mean(0))
    assert np.unravel_index(mean.argmax(), mean.shape) == live
    dead = np.delete(mean.ravel(), live[0] * 4 + live[1])
    assert (dead <= 1e-6 * base.max()).all() and mean[live] > 100 * dead.max()

    def remove(x, name):  # the same ablation by hand, through the hook point
        x = x.clone()
        x[:, live[1]] = 0
        return x

    with torch.no_grad(), hooks(denoiser.backbone, {"blocks.1.attn.heads_out": remove}):
        ablated = attr.denoising_loss(denoiser, x0 + 0.5 * noise, x0, 0.5).numpy()
    np.testing.assert_allclose(importance[:, 1, 3], ablated - base, rtol=1e-4, atol=1e-8)


def test_join_locality_on_run_layer_head():
    heads = pd.DataFrame({"run": "r", "metric": "head_importance", "layer": [0, 0, 1],
                          "head": [0, 1, 0], "value": [1.0, 2.0, 3.0], "pixel": ""})
    other = pd.DataFrame({"run": ["r"], "metric": ["radius_50"], "value": [4.0],
                          "pixel": ["all"]})
    loc = pd.DataFrame({"run": ["r", "r", "r", "x"], "layer": [0, 0, 1, 0], "head": [1, 1, 0, 1],
                        "sigma": [0.1, 0.5, 0.1, 0.1], "metric": "entropy",
                        "value": [1.0, 3.0, 5.0, 9.0]})
    out = metrics.join_locality(pd.concat([other, heads], ignore_index=True), loc)
    got = out.set_index(["metric", "layer", "head"])["locality_entropy"]
    assert got[("head_importance", 0, 1)] == 2.0  # mean over the locality table's sigmas
    assert got[("head_importance", 1, 0)] == 5.0
    assert np.isnan(got[("head_importance", 0, 0)])
    assert len(out) == 4


# ---------------------------------------------------------------------------------- influence


class Templates(nn.Module):
    """The empirical-optimal (memorizing) denoiser with learnable templates T:
    D(y) = sum_i softmax_i(-||y - T_i||^2 / 2 sigma^2) T_i."""

    def __init__(self, n: int, size: int):
        super().__init__()
        self.templates = nn.Parameter(torch.zeros(n, size * size))  # rows: flat templates

    def forward(self, y, sigma, class_labels=None):
        t = self.templates
        flat = y.flatten(1)
        logits = -((flat[:, None] - t[None]) ** 2).sum(-1) / (2 * float(sigma) ** 2)
        return (logits.softmax(-1) @ t).reshape(y.shape)


def test_influence_finds_the_planted_source_in_a_memorizing_model(tmp_path):
    n, size, sigma = 5, 6, 0.25
    g = torch.Generator().manual_seed(4)
    train = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    offsets = torch.randn(n, size * size, generator=g)
    paths = []
    for k in range(1, 4):  # "training": the templates approach the images
        path = tmp_path / f"step-{k}.safetensors"
        save_file({"templates": train.flatten(1) + 0.5**k * offsets}, str(path))
        paths.append(path)
    planted = torch.tensor([3, 0, 4, 3])
    samples = train[planted] + 0.01 * torch.randn(4, 1, size, size, generator=g)
    noise = torch.randn(1, size, size, generator=g)

    def load(model, path):
        model.load_state_dict(load_file(path))
        return 1e-3

    model = Templates(n, size)
    scores = sum(attr.tracin_scores(model, p, load, train, samples, sigma, noise, batch=4)
                 for p in paths)
    assert scores.shape == (4, n)
    assert (scores.argmax(1) == planted.numpy()).all()
    nn_index, _ = metrics.nearest_two(samples.numpy(), train.numpy())
    summary = metrics.influence_summary(scores, nn_index, np.ones((4, 2)))
    assert summary["influence_nn_agreement"] == 1 and summary["influence_nn_rank"] == 1


# ------------------------------------------------------------------------- end to end (a run)


@pytest.fixture(scope="module")
def memorized_run(tmp_path_factory):
    """N = 2 MNIST digits at 8x8, trained until the samples copy them, checkpoints kept."""
    from probe.train import train_run

    root = tmp_path_factory.mktemp("attribution")
    cfg = RunConfig(
        data=DataConfig(dataset="mnist", size=8),
        subsets=SubsetConfig(ns=(2,), test_size=16),
        model=ModelConfig(arch="dit-tiny/4"),
        train=TrainConfig(n=2, objective="edm", steps=250, batch=8, lr=1e-3,
                          checkpoint_every=50, keep_checkpoints=True, log_every=50,
                          sample_grid=0, compile="off"))
    store = Artifacts.at(root)
    return train_run(cfg, store, progress=False, log=lambda m: None), store


def test_influence_attributes_memorized_samples_to_their_source(memorized_run):
    run_dir, store = memorized_run
    from probe import pipeline
    from probe.config import AttributionConfig
    from probe.runs import load_run

    cfg = AttributionConfig(sigmas=(0.2,), images=2, pixels=("center",), influence=True,
                            samples=8)
    result = pipeline.run_probe(attr.PROBE, [load_run(run_dir, store)], store, cfg,
                                log=lambda m: None)
    with h5py.File(result.files[0], "r") as f:
        scores = f["influence/total/scores"][()]
        nn_index, dist = f["influence/samples/nn"][()], f["influence/samples/nn_distance"][()]
        assert len([k for k in f["influence"] if k.startswith("ckpt")]) == 5
    copies = dist[:, 0] / dist[:, 1] < 1 / 3  # Yoon et al.'s copy criterion
    assert copies.any(), "the fixture run should memorize"
    assert (scores.argmax(1)[copies] == nn_index[copies]).all()
    df = pd.read_parquet(result.table_path)
    value = df.set_index("metric")["value"]
    assert value["influence_nn_agreement_memorized"] == 1.0
    assert value["memorized_fraction"] == pytest.approx(copies.mean())
    rf = df[(df["metric"] == "radius_90") & (df["pixel"] == "all")]
    assert len(rf) == 1 and 0 <= rf["value"].iloc[0] <= 8 * np.sqrt(2)
    assert {p.name for p in result.figures} >= {"attribution_rf_maps_s0p2.png",
                                                   "attribution_radius_vs_n.png"}


def invoke(store, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(store.root), "attribution", *args])


def test_cli_bad_input_is_one_line(memorized_run, tmp_path):
    run_dir, store = memorized_run
    assert_one_line_error(invoke(store, str(run_dir), "--pixels", "3,8"), "outside", "8x8")
    bare = tmp_path / run_dir.name  # the same run without its intermediate checkpoints
    shutil.copytree(run_dir, bare)
    for step in sorted((bare / "checkpoints").iterdir())[:-1]:
        shutil.rmtree(step)
    assert_one_line_error(invoke(store, str(bare), "--influence"), "--keep-checkpoints")
    dry = invoke(store, str(run_dir), "--pixels", "grid", "--dry-run")
    assert dry.exit_code == 0 and "pixels (x,y): 1,1 4,1 6,1" in dry.output
