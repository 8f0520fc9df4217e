"""How local is attention? Pure functions on probability maps [..., query, key] over a token grid.

Geometry: tokens lie on a `Grid` of height x width positions, row-major (token n sits at row
n // width, column n % width), `stride_px` pixels apart (a DiT's patch size; a UNet level's
downsampling factor). Two norms, each where it fits:

- mean attention distance uses the Euclidean norm, in pixels (token distance x stride), as in
  ViT's "mean attention distance": sum_k p[q, k] * ||pos_q - pos_k|| * stride, averaged over q;
- radii (mass within r, radius holding 90 % of the mass) use the Chebyshev norm
  max(|dy|, |dx|), in tokens, because a local attention window of side w is exactly the
  Chebyshev ball of radius w // 2: a windowed layer has all its mass within that radius.

Entropy is in nats, -sum_k p log p averaged over queries (0 for one-hot rows, log(L) for uniform).
Every function reduces the last two axes (query, key) and keeps the leading ones, so one call
handles [batch, head, query, key]. They accept torch tensors or numpy arrays and return the
same kind. Maps are expected to be rows of probabilities; nothing renormalises them.

Tables: `tidy_table` turns per-layer metric arrays into rows with columns run, arch, n, split,
window, sigma, layer, head, metric, value (+ hook, the hook point's name); `gap_correlation`
ranks locality against the PSNR gap (Spearman) per architecture, layer and metric.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.formats.attention import Grid, read_metrics

COLUMNS = ("run", "arch", "n", "split", "window", "partition", "sigma", "layer", "head", "metric",
           "value", "hook")
GAP_METRIC = "psnr_gap"
MASS_FRACTION = 0.9


def metric_names(radii=(1, 2, 4)) -> tuple[str, ...]:
    """Metric names in the order `locality_metrics` stacks them."""
    return ("distance_px", *(f"mass_r{r}" for r in radii), "entropy", "radius90")


# ------------------------------------------------------------------------------ the metrics


@functools.lru_cache(maxsize=32)
def _distances(height: int, width: int, norm: str) -> torch.Tensor:
    d = Grid(height, width).distances(norm)
    return torch.from_numpy(d.astype(np.int64 if norm == "chebyshev" else np.float32))


def _check(p: torch.Tensor, grid: Grid) -> None:
    if p.ndim < 2 or p.shape[-1] != grid.tokens or p.shape[-2] != grid.tokens:
        raise ValueError(f"map of shape {tuple(p.shape)} does not fit a {grid.height}x"
                         f"{grid.width} grid ([..., {grid.tokens}, {grid.tokens}] expected)")


def _torch_in_out(fn):
    """Let a torch function take numpy arrays and give numpy back."""

    @functools.wraps(fn)
    def wrapper(p, *args, **kwargs):
        if isinstance(p, torch.Tensor):
            return fn(p, *args, **kwargs)
        out = fn(torch.tensor(np.asarray(p, np.float64)), *args, **kwargs)
        if isinstance(out, dict):
            return {k: v.numpy() for k, v in out.items()}
        return out.numpy()

    return wrapper


@_torch_in_out
def mean_distance(p, grid: Grid):
    """Mean Euclidean attention distance in pixels: sum_k p * ||pos_q - pos_k|| * stride,
    averaged over queries."""
    _check(p, grid)
    d = _distances(grid.height, grid.width, "euclidean").to(p.device, p.dtype)
    # sum over queries and keys of p * d in one matrix-vector product (no [.., L, L] temporary)
    return (p.flatten(-2) @ d.flatten()) * (grid.stride_px / grid.tokens)


@_torch_in_out
def ring_mass(p, grid: Grid):
    """[..., query, R + 1]: mass at Chebyshev distance exactly r tokens, r = 0..R (one pass)."""
    _check(p, grid)
    ring = _distances(grid.height, grid.width, "chebyshev").to(p.device)
    out = p.new_zeros(*p.shape[:-1], grid.max_radius + 1)
    return out.scatter_add_(-1, ring.expand(p.shape), p)


def _cumulative(rings: torch.Tensor, radius: int) -> torch.Tensor:
    return rings[..., : max(radius, -1) + 1].sum(-1)


@_torch_in_out
def mass_within(p, grid: Grid, radius: int):
    """Fraction of the mass within Chebyshev radius `radius` tokens, averaged over queries."""
    return _cumulative(ring_mass(p, grid), radius).mean(-1)


@_torch_in_out
def entropy(p):
    """Attention entropy in nats, averaged over queries."""
    return -torch.special.xlogy(p, p).sum(-1).mean(-1)


def _radius(rings: torch.Tensor, fraction: float) -> torch.Tensor:
    # The smallest r with cumulative mass >= fraction: count the radii that fall short. The
    # tolerance keeps fraction 1 reachable under float rounding.
    short = rings.cumsum(-1) < fraction - 1e-6
    return short.sum(-1).to(rings.dtype)


@_torch_in_out
def radius_holding(p, grid: Grid, fraction: float = MASS_FRACTION):
    """Smallest Chebyshev radius (tokens) holding `fraction` of each query's mass, averaged
    over queries."""
    return _radius(ring_mass(p, grid), fraction).mean(-1)


@_torch_in_out
def locality_metrics(p, grid: Grid, radii=(1, 2, 4)):
    """Every metric of `metric_names(radii)` at once (one ring pass), each of shape p.shape[:-2]."""
    rings = ring_mass(p, grid)
    out = {"distance_px": mean_distance(p, grid)}
    for r in radii:
        out[f"mass_r{r}"] = _cumulative(rings, r).mean(-1)
    out["entropy"] = entropy(p)
    out["radius90"] = _radius(rings, MASS_FRACTION).mean(-1)
    return out


# ---------------------------------------------------------------------------------- tables


def tidy_table(meta: dict, sigmas, layers: list[dict]) -> pd.DataFrame:
    """Long table from one probe file's metric arrays, averaged over its images.

    meta: run, arch, n (None: unknown), split. layers: dicts with layer, hook, window and
    `values` [image, sigma, head, metric] named by `names`.
    """
    frames = []
    for info in layers:
        values = np.asarray(info["values"], np.float64).mean(0)  # over images
        s, h, m = np.meshgrid(np.arange(values.shape[0]), np.arange(values.shape[1]),
                              np.arange(values.shape[2]), indexing="ij")
        frames.append(pd.DataFrame({
            "sigma": np.asarray(sigmas, np.float64)[s.ravel()],
            "layer": int(info["layer"]), "head": h.ravel(),
            "metric": np.asarray(info["names"], object)[m.ravel()],
            "value": values.ravel(), "window": int(info["window"]),
            "partition": int(info.get("partition", 0)), "hook": info["hook"]}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    df["run"], df["arch"], df["split"] = meta["run"], meta["arch"], meta["split"]
    df["n"] = pd.array([meta["n"]] * len(df), dtype="Int64")
    df = df[list(COLUMNS)]
    return df.astype({"layer": "int64", "head": "int64", "window": "int64",
                      "partition": "int64"})


def table_from_file(path: str | Path) -> pd.DataFrame:
    """The tidy locality table of one attention.h5 (means over its images)."""
    attrs, sigmas, layers = read_metrics(path)
    n = attrs.get("n", "")
    meta = {"run": attrs["run_id"], "arch": attrs["arch"], "split": attrs.get("split", ""),
            "n": None if n in ("", None) else int(n)}
    return tidy_table(meta, sigmas, layers)


def layer_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over heads: one value per run x sigma x layer x metric."""
    keys = ["run", "arch", "n", "split", "window", "sigma", "layer", "metric"]
    return df.groupby(keys, dropna=False, sort=True)["value"].mean().reset_index()


def summary(df: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Run x layer rows, one column per metric: mean over heads and noise levels."""
    data = df if metrics is None else df[df["metric"].isin(metrics)]
    keys = ["run", "n", "layer", "window", "metric"]
    table = (data.groupby(keys, dropna=False, sort=False)["value"].mean()
             .unstack("metric").reset_index())
    table.columns.name = None
    order = [c for c in metric_names(_radii(df)) if c in table.columns]
    return table[["run", "n", "layer", "window", *order]].sort_values(
        ["n", "run", "layer"], kind="stable", na_position="last").reset_index(drop=True)


def _radii(df: pd.DataFrame) -> tuple[int, ...]:
    names = df["metric"].unique() if len(df) else []
    return tuple(sorted(int(m[6:]) for m in names if str(m).startswith("mass_r")))


def gap_correlation(locality: pd.DataFrame, generalization: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation across runs between a layer's locality and the PSNR gap.

    Per architecture x layer x locality metric: once per noise level present in both tables
    (matched to 6 significant digits), and once over the means across noise levels (sigma NaN).
    A group needs 3 runs with varying values; others are left out. Columns: arch, layer,
    metric, sigma, runs, rho, p_value.
    """
    from scipy.stats import spearmanr

    gap = generalization[generalization["metric"] == GAP_METRIC]
    columns = ["arch", "layer", "metric", "sigma", "runs", "rho", "p_value"]
    if gap.empty or locality.empty:
        return pd.DataFrame(columns=columns)
    loc = locality.assign(sigma_key=_sigma_key(locality["sigma"]))
    gap = gap.assign(sigma_key=_sigma_key(gap["sigma"]))
    per_sigma = (loc.groupby(["arch", "run", "layer", "metric", "sigma_key"])["value"].mean()
                 .reset_index()
                 .merge(gap.groupby(["run", "sigma_key"])["value"].mean().rename("gap")
                        .reset_index(), on=["run", "sigma_key"]))
    overall = (loc.groupby(["arch", "run", "layer", "metric"])["value"].mean().reset_index()
               .merge(gap.groupby("run")["value"].mean().rename("gap").reset_index(), on="run")
               .assign(sigma_key=np.nan))
    rows = []
    for frame in (per_sigma, overall):
        for (arch, layer, metric, sigma), g in frame.groupby(
                ["arch", "layer", "metric", "sigma_key"], dropna=False):
            if len(g) < 3 or g["value"].nunique() < 2 or g["gap"].nunique() < 2:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = spearmanr(g["value"], g["gap"])
            rows.append((arch, layer, metric, sigma, len(g), float(result.statistic),
                         float(result.pvalue)))
    return pd.DataFrame(rows, columns=columns)


def _sigma_key(sigmas: pd.Series) -> pd.Series:
    return sigmas.astype(float).map(lambda s: float(f"{s:.6g}"))
