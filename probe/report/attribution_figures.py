"""Figures of `probe attribution`, drawn from the files only: tables/attribution.parquet and the
image-mean receptive-field maps in probes/<run-id>/attribution.h5 (`rf_mean`).

- attribution_rf_maps_s{sigma}.png: the first probed pixel's receptive field, one panel per
  model (rows: arch + attention windows) and N (columns), with the 50 % / 90 % mass circles;
- attribution_radius_vs_n.png: radius_50, radius_90 and mean distance (all pixels) against N,
  one line per model and noise level;
- attribution_heads_vs_locality.png: head importance against that head's attention locality,
  one panel per locality metric (only when the table carries locality columns).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from probe import artifacts  # noqa: E402
from probe.artifacts import Artifacts  # noqa: E402
from probe.metrics.attribution import RF_METRICS  # noqa: E402
from probe.metrics.tables import read_table  # noqa: E402
from probe.report.joins import head_locality  # noqa: E402
from probe.report.save import save_figure_png, slug  # noqa: E402

LABELS = {"radius_50": "radius holding 50% (px)", "radius_90": "radius holding 90% (px)",
          "mean_distance": "mean attribution distance (px)"}


def _model(df: pd.DataFrame) -> pd.Series:
    windows = df["windows"].fillna("").astype(str)
    return df["arch"].astype(str) + np.where(windows != "", " w" + windows, "")


# ------------------------------------------------------------------------------------ plots


def rf_panel(ax, mass: np.ndarray, pixel: tuple[int, int], radii: dict[str, float], title: str):
    """One receptive-field map (log colour scale), the output pixel and its mass circles."""
    positive = mass[mass > 0]
    norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max()) \
        if positive.size else None
    ax.imshow(np.where(mass > 0, mass, np.nan), cmap="magma", norm=norm,
              interpolation="nearest")
    ax.scatter([pixel[1]], [pixel[0]], marker="+", s=30, c="cyan", linewidths=1)
    for name, style in (("radius_50", "-"), ("radius_90", "--")):
        r = radii.get(name)
        if r is not None and np.isfinite(r):
            ax.add_patch(Circle((pixel[1], pixel[0]), r, fill=False, ec="cyan", ls=style, lw=0.8))
    ax.set_xlim(-0.5, mass.shape[1] - 0.5)  # circles may reach past the image: clip them
    ax.set_ylim(mass.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def radius_lines(ax, df: pd.DataFrame, metric: str):
    """value vs N, one line per (model, sigma); splits of one N are averaged by the line."""
    data = df[df["metric"] == metric]
    for (model, sigma), g in data.groupby(["model", "sigma"], sort=True):
        by_n = g.groupby("n")["value"]
        ax.plot(by_n.mean().index, by_n.mean().values, marker="o", ms=3,
                label=f"{model}, σ={sigma:g}")
        ax.scatter(g["n"], g["value"], s=6, alpha=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("N (training images)")
    ax.set_ylabel(LABELS.get(metric, metric))


def importance_scatter(ax, df: pd.DataFrame, column: str):
    """Head importance vs one locality metric; colour = layer."""
    data = df.dropna(subset=[column])
    points = ax.scatter(data[column], data["value"], c=data["layer"].astype(float), s=10,
                        cmap="viridis")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel(column.removeprefix("locality_"))
    ax.set_ylabel("loss increase when the head is removed")
    return points


# ---------------------------------------------------------------------------------- figures


def rf_maps_figure(store: Artifacts, df: pd.DataFrame, sigma: float) -> Path | None:
    rf = df[(df["sigma"] == sigma) & df["metric"].isin(RF_METRICS)]
    runs = rf.drop_duplicates("run").sort_values(["model", "n", "split"])
    runs = runs.drop_duplicates(["model", "n"])  # one split per panel (the first: a)
    if runs.empty:
        return None
    models, ns = list(dict.fromkeys(runs["model"])), sorted(runs["n"].unique())
    label = "?"
    fig, axes = plt.subplots(len(models), len(ns), squeeze=False,
                             figsize=(1.8 * len(ns) + 0.5, 1.9 * len(models)))
    for ax in axes.ravel():
        ax.axis("off")
    for _, row in runs.iterrows():
        path = store.probe_file(row["run"], artifacts.ATTRIBUTION_H5)
        if not path.is_file():
            continue
        with h5py.File(path, "r") as f:
            sigmas = [float(s) for s in f["sigmas"][()]]
            key = f"rf_mean/s{sigmas.index(sigma)}" if sigma in sigmas else None
            if key is None or key not in f:
                continue
            mass, pixel = f[key]["mass"][0], tuple(int(v) for v in f["pixels"][0])
        label = f"{pixel[1]},{pixel[0]}"
        mine = rf[(rf["run"] == row["run"]) & (rf["pixel"] == label)]
        radii = dict(zip(mine["metric"], mine["value"]))
        ax = axes[models.index(row["model"]), ns.index(row["n"])]
        ax.axis("on")
        rf_panel(ax, mass, pixel, radii, f"{row['model']}\nN={row['n']} {row['split']}")
    fig.suptitle(f"receptive field of output pixel x,y = {label}, σ={sigma:g}\n"
                 "(circles: 50% / 90% of |attribution|)", fontsize=8, y=1.0 + 0.25 / len(models))
    stem = f"attribution_rf_maps_s{slug(f'{sigma:g}')}"
    return save_figure_png(fig, store.figures_dir / f"{stem}.png")


def radius_figure(store: Artifacts, df: pd.DataFrame) -> Path | None:
    data = df[(df["pixel"] == "all") & df["metric"].isin(RF_METRICS)]
    if data.empty:
        return None
    fig, axes = plt.subplots(1, len(RF_METRICS), figsize=(4 * len(RF_METRICS), 3.2))
    for ax, metric in zip(axes, RF_METRICS):
        radius_lines(ax, data, metric)
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("effective receptive field vs training-set size", fontsize=9)
    return save_figure_png(fig, store.figures_dir / "attribution_radius_vs_n.png")


def heads_figure(store: Artifacts, run_ids=None) -> Path | None:
    """Head importance against that head's attention locality (tables/attribution joined with
    tables/locality as they are now)."""
    heads = head_locality(store, run_ids)
    if heads is None or heads.empty:
        return None
    columns = [c for c in heads.columns if c.startswith("locality_") and heads[c].notna().any()]
    if not columns:
        return None
    cols = min(3, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.6 * cols, 3 * rows),
                             layout="constrained")
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    for i, (ax, column) in enumerate(zip(axes.ravel(), columns)):
        points = importance_scatter(ax, heads, column)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        if i % cols:
            ax.set_ylabel("")
    fig.colorbar(points, ax=axes, label="layer", shrink=0.6)
    fig.suptitle("are the heads that matter the local ones? (every head, layer and σ)",
                 fontsize=9)
    return save_figure_png(fig, store.figures_dir / "attribution_heads_vs_locality.png")


def draw(store: Artifacts, run_ids: list[str] | None = None) -> list[Path]:
    """Every attribution figure from tables/attribution (restricted to `run_ids` if given)."""
    df = read_table(store.table(artifacts.ATTRIBUTION_TABLE))
    if df is None or df.empty:
        return []
    if run_ids is not None:
        df = df[df["run"].isin(run_ids)]
    df = df.assign(model=_model(df))
    sigmas = sorted(df.loc[df["metric"].isin(RF_METRICS), "sigma"].dropna().unique())
    drawn = [rf_maps_figure(store, df, float(s)) for s in sigmas]
    drawn += [radius_figure(store, df), heads_figure(store, run_ids)]
    return [p for p in drawn if p is not None]
