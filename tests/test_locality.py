"""Locality metrics on synthetic attention patterns with known answers, and the tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from probe.metrics.locality import (
    COLUMNS,
    Grid,
    entropy,
    gap_correlation,
    layer_means,
    locality_metrics,
    mass_within,
    mean_distance,
    metric_names,
    radius_holding,
    ring_mass,
    summary,
    tidy_table,
)


def brute_positions(grid: Grid) -> list[tuple[int, int]]:
    return [(y, x) for y in range(grid.height) for x in range(grid.width)]


def window_attention(grid: Grid, window: int, seed: int = 0) -> np.ndarray:
    """Random softmax attention restricted to each query's window x window square."""
    rng = np.random.default_rng(seed)
    pos = brute_positions(grid)
    scores = rng.normal(size=(2, grid.tokens, grid.tokens)) * 2
    for q, (qy, qx) in enumerate(pos):
        for k, (ky, kx) in enumerate(pos):
            if max(abs(qy - ky), abs(qx - kx)) > window // 2:
                scores[:, q, k] = -np.inf
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("grid", [Grid(4, 4, 2.0), Grid(3, 5, 1.0), Grid(1, 1, 8.0)])
def test_self_attention_is_perfectly_local(grid):
    p = np.broadcast_to(np.eye(grid.tokens), (2, 3, grid.tokens, grid.tokens))
    assert np.allclose(mean_distance(p, grid), 0)
    assert np.allclose(mass_within(p, grid, 0), 1)
    assert np.allclose(entropy(p), 0)
    assert np.allclose(radius_holding(p, grid), 0)
    assert mean_distance(p, grid).shape == (2, 3)


@pytest.mark.parametrize("grid", [Grid(4, 4, 2.0), Grid(3, 5, 4.0), Grid(6, 2, 1.0)])
def test_uniform_attention_matches_brute_force(grid):
    L = grid.tokens
    p = np.full((L, L), 1.0 / L)
    pos = brute_positions(grid)
    pairs = list(itertools.product(pos, pos))
    euclid = np.mean([math.dist(a, b) for a, b in pairs]) * grid.stride_px
    assert mean_distance(p, grid) == pytest.approx(euclid, rel=1e-9)
    assert entropy(p) == pytest.approx(math.log(L))
    cheb = np.array([[max(abs(a[0] - b[0]), abs(a[1] - b[1])) for b in pos] for a in pos])
    for r in (0, 1, 2, 4):
        assert mass_within(p, grid, r) == pytest.approx((cheb <= r).mean())
    # Per query: the smallest r whose Chebyshev ball holds 90 % of the keys.
    r90 = [min(r for r in range(L) if (row <= r).mean() >= 0.9 - 1e-12) for row in cheb]
    assert radius_holding(p, grid) == pytest.approx(np.mean(r90))


def test_uniform_attention_on_a_line_has_the_closed_form_distance():
    # Mean |i - j| over i, j uniform on 0..W-1 is (W^2 - 1) / (3 W).
    for width in (2, 5, 16):
        grid = Grid(1, width, 3.0)
        p = np.full((width, width), 1.0 / width)
        assert mean_distance(p, grid) == pytest.approx(3.0 * (width**2 - 1) / (3 * width))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_window_restricted_attention_keeps_all_mass_within_the_window(window):
    grid = Grid(7, 6, 2.0)
    p = window_attention(grid, window)
    radius = window // 2
    assert np.allclose(mass_within(p, grid, radius), 1)
    assert np.all(radius_holding(p, grid) <= radius)
    if radius:
        assert np.all(mass_within(p, grid, radius - 1) < 1 - 1e-3)
    # Euclidean distance can reach the window's corner, never beyond.
    assert np.all(mean_distance(p, grid) <= radius * math.sqrt(2) * grid.stride_px + 1e-9)


def test_point_attention_at_a_known_offset():
    grid = Grid(5, 5, 2.0)
    L = grid.tokens
    p = np.zeros((L, L))
    pos = brute_positions(grid)
    for q, (y, x) in enumerate(pos):  # attend to the key 2 rows down, 1 column right (wrapped)
        p[q, pos.index(((y + 2) % 5, (x + 1) % 5))] = 1.0
    dists = [math.dist((y, x), ((y + 2) % 5, (x + 1) % 5)) for y, x in pos]
    cheb = [max(abs(y - (y + 2) % 5), abs(x - (x + 1) % 5)) for y, x in pos]
    assert mean_distance(p, grid) == pytest.approx(np.mean(dists) * 2.0)
    assert radius_holding(p, grid) == pytest.approx(np.mean(cheb))
    assert mass_within(p, grid, 1) == pytest.approx(np.mean(np.array(cheb) <= 1))


def test_locality_metrics_agree_with_the_single_metrics_and_accept_torch():
    grid = Grid(4, 5, 2.0)
    p = window_attention(grid, 5, seed=3)
    all_at_once = locality_metrics(torch.from_numpy(p).float(), grid, radii=(1, 2, 4))
    assert list(all_at_once) == list(metric_names((1, 2, 4)))
    assert torch.allclose(all_at_once["distance_px"], torch.from_numpy(mean_distance(p, grid))
                          .float(), atol=1e-5)
    assert torch.allclose(all_at_once["mass_r2"],
                          torch.from_numpy(mass_within(p, grid, 2)).float(), atol=1e-5)
    assert torch.allclose(all_at_once["entropy"], torch.from_numpy(entropy(p)).float(),
                          atol=1e-5)
    rings = ring_mass(p, grid)
    assert rings.shape == (2, grid.tokens, grid.max_radius + 1)
    assert np.allclose(rings.sum(-1), 1)


def test_a_map_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        mean_distance(np.ones((1, 5, 5)) / 5, Grid(2, 2))


# ---------------------------------------------------------------------------------- tables


def _layers(values_by_layer):
    names = metric_names((1,))
    return [{"layer": i, "hook": f"blocks.{i}.attn.pattern", "window": 3 * (i == 0),
             "values": v, "names": names} for i, v in enumerate(values_by_layer)]


def test_tidy_table_averages_images_and_keeps_every_head():
    rng = np.random.default_rng(0)
    values = [rng.random((3, 2, 4, len(metric_names((1,))))) for _ in range(2)]  # img,sig,head,m
    df = tidy_table({"run": "r", "arch": "dit-tiny/2", "n": 10, "split": "a"}, [0.5, 1.0],
                    _layers(values))
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 2 * 2 * 4 * len(metric_names((1,)))
    e = metric_names((1,)).index("entropy")
    row = df[(df.layer == 1) & (df.sigma == 1.0) & (df["head"] == 2) & (df.metric == "entropy")]
    assert row["value"].item() == pytest.approx(values[1][:, 1, 2, e].mean())
    assert set(df[df.layer == 0]["window"]) == {3} and set(df[df.layer == 1]["window"]) == {0}
    means = layer_means(df)
    got = means[(means.layer == 1) & (means.sigma == 1.0) & (means.metric == "entropy")]
    assert got["value"].item() == pytest.approx(values[1][:, 1, :, e].mean())
    table = summary(df)
    assert list(table.columns) == ["run", "n", "layer", "window", *metric_names((1,))]
    assert table.loc[table.layer == 0, "distance_px"].item() == pytest.approx(
        values[0][..., 0].mean())


def test_unknown_n_is_a_missing_value():
    df = tidy_table({"run": "x", "arch": "diffusers:DiT", "n": None, "split": ""}, [1.0],
                    _layers([np.zeros((1, 1, 1, 4))]))
    assert df["n"].isna().all() and str(df["n"].dtype) == "Int64"


def _gap_inputs(sign: float, runs: int = 4):
    loc, gen = [], []
    for i in range(runs):
        for sigma in (0.5, 1.0):
            for head in (0, 1):
                loc.append({"run": f"r{i}", "arch": "dit", "n": 10**i, "split": "a",
                            "window": 0, "sigma": sigma, "layer": 0, "head": head,
                            "metric": "distance_px", "value": float(i**2 + head)})
            gen.append({"run": f"r{i}", "n": 10**i, "split": "a", "arch": "dit",
                        "sigma": sigma, "metric": "psnr_gap", "value": sign * (i + 0.1 * sigma)})
            gen.append({"run": f"r{i}", "n": 10**i, "split": "a", "arch": "dit",
                        "sigma": sigma, "metric": "psnr_train", "value": -sign * i})
    return pd.DataFrame(loc), pd.DataFrame(gen)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gap_correlation_of_a_monotone_relation_is_plus_or_minus_one(sign):
    loc, gen = _gap_inputs(sign)
    result = gap_correlation(loc, gen)
    assert len(result) == 3  # sigma 0.5, sigma 1, and the mean over sigmas (NaN)
    assert result["sigma"].isna().sum() == 1
    assert np.allclose(result["rho"], sign) and (result["runs"] == 4).all()


def test_gap_correlation_needs_three_runs_and_a_gap():
    loc, gen = _gap_inputs(1.0, runs=2)
    assert gap_correlation(loc, gen).empty
    loc, gen = _gap_inputs(1.0)
    assert gap_correlation(loc, gen[gen.metric != "psnr_gap"]).empty


def test_plots_draw_one_line_per_run_and_per_layer():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probe.report.plots import locality_vs_layer, locality_vs_n

    df = pd.DataFrame({"run": ["big", "big", "ext", "ext", "small", "small"],
                       "n": pd.array([100, 100, None, None, 10, 10], dtype="Int64"),
                       "split": ["a", "a", "", "", "a", "a"], "layer": [1, 0, 0, 1, 0, 1],
                       "value": [2.0, 1.0, 3.0, 4.0, 5.0, 6.0], "metric": "distance_px"})
    fig, (left, right) = plt.subplots(1, 2)
    lines = locality_vs_layer(df, left).lines
    assert [line.get_label() for line in lines] == ["N=10 a", "N=100 a", "N=?"]  # by N
    assert list(lines[1].get_xdata()) == [0, 1] and list(lines[1].get_ydata()) == [1.0, 2.0]
    lines = locality_vs_n(df, right).lines  # the run of unknown N has no place on this axis
    assert [line.get_label() for line in lines] == ["layer 0", "layer 1"]
    assert list(lines[0].get_xdata()) == [10, 100] and list(lines[0].get_ydata()) == [5.0, 1.0]
    plt.close(fig)
