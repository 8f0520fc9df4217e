"""Plots: a DataFrame (or an array already computed) in, a matplotlib Axes out. No computing.

Functions are grouped by the probe whose files they draw; figures.py lays them out and saves.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# ------------------------------------------------------------------------- attention locality

METRIC_LABELS = {
    "distance_px": "mean attention distance (px)",
    "entropy": "attention entropy (nats)",
    "radius90": "radius holding 90% (tokens)",
}


def metric_label(metric: str) -> str:
    if metric.startswith("mass_r"):
        return f"mass within {metric[6:]} tokens"
    return METRIC_LABELS.get(metric, metric)


def attention_map(attention: np.ndarray, query: tuple[int, int], ax=None, title: str = "",
                  vmax: float | None = None):
    """One query's attention over the token grid [height, width], the query marked."""
    ax = ax or plt.gca()
    ax.imshow(attention, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
    ax.scatter([query[1]], [query[0]], marker="s", s=18, facecolors="none", edgecolors="red",
               linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    return ax


def _run_label(n, split) -> str:
    n = "?" if pd.isna(n) else str(int(n))
    return f"N={n}" + (f" {split}" if split else "")


def locality_vs_layer(df: pd.DataFrame, ax=None):
    """One line per run: value vs layer, coloured by N (viridis, small N dark), split a solid and
    b dashed. `df`: layer means of one metric at one noise level (metrics.locality.layer_means)."""
    ax = ax or plt.gca()
    runs = df[["run", "n", "split"]].drop_duplicates().sort_values(["n", "split", "run"])
    runs["key"] = runs["n"].astype("Float64").fillna(-1.0)  # unknown N: a colour of its own
    ns = list(runs["key"].drop_duplicates())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(ns), 1)))
    styles = dict(zip(sorted(runs["split"].unique()), ("-", "--", ":", "-.")))
    for _, run in runs.iterrows():
        line = df[df["run"] == run["run"]].sort_values("layer")
        ax.plot(line["layer"], line["value"], styles[run["split"]], marker="o", markersize=3,
                color=colours[ns.index(run["key"])], label=_run_label(run["n"], run["split"]))
    ax.set_xlabel("layer")
    ax.set_ylabel(metric_label(str(df["metric"].iloc[0])) if len(df) else "")
    return ax


def locality_vs_n(df: pd.DataFrame, ax=None):
    """One line per layer (and split): value vs N on a log axis, coloured by layer. `df`: layer
    means of one metric at one noise level; runs of unknown N are left out."""
    ax = ax or plt.gca()
    data = df.dropna(subset=["n"]).astype({"n": float})
    layers = sorted(data["layer"].unique())
    colours = plt.get_cmap("magma")(np.linspace(0, 0.85, max(len(layers), 1)))
    styles = dict(zip(sorted(data["split"].unique()), ("-", "--", ":", "-.")))
    for colour, layer in zip(colours, layers):
        for split, style in styles.items():
            line = data[(data["layer"] == layer) & (data["split"] == split)].sort_values("n")
            ax.plot(line["n"], line["value"], style, marker="o", markersize=3, color=colour,
                    label=f"layer {layer}" + (f" {split}" if len(styles) > 1 else ""))
    ax.set_xscale("log")
    ax.set_xlabel("N (training images)")
    ax.set_ylabel(metric_label(str(df["metric"].iloc[0])) if len(df) else "")
    return ax
