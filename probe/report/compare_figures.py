"""Figures of `probe compare`, drawn from its files only (compare.h5 per run and
tables/compare): nothing here computes a metric.

- figures/compare/<run>-samples.png: one row per seed, columns model sample | ELS sample |
  ideal sample | nearest training image (the theories the file holds, ELS and ideal first);
- figures/compare/onestep-<run>.png: one-step r^2 vs sigma, one line per theory (held-out
  solid, training dashed);
- figures/compare/r2_vs_n.png: trajectory r^2 (median over samples) vs N, one line per
  architecture and theory.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from probe import artifacts  # noqa: E402
from probe.artifacts import Artifacts  # noqa: E402
from probe.data.loader import to_uint8  # noqa: E402
from probe.formats import compare as fmt  # noqa: E402
from probe.formats.images import save_grid  # noqa: E402
from probe.metrics.tables import read_table  # noqa: E402
from probe.report.save import save_figure, slug  # noqa: E402

ROWS = 8  # seeds shown per sample figure
ORDER = ("els", "ls", "ideal", "wiener")


def _directory(store: Artifacts) -> Path:
    return store.figures_dir / "compare"


def sample_grid(store: Artifacts, run_id: str) -> Path | None:
    path = store.probe_file(run_id, artifacts.COMPARE_H5)
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        if fmt.TRAJECTORY not in f or fmt.MODEL not in f[fmt.TRAJECTORY]:
            return None
        names = [t for t in f[fmt.TRAJECTORY] if t != fmt.MODEL]
        names = sorted(names, key=lambda t: (ORDER.index(t) if t in ORDER else len(ORDER), t))
        model = f[fmt.key(fmt.TRAJECTORY, fmt.MODEL)]
        count = min(ROWS, len(model["samples"]))
        columns = [to_uint8(torch.from_numpy(model["samples"][:count]))]
        columns += [to_uint8(torch.from_numpy(f[fmt.key(fmt.TRAJECTORY, t)]["samples"][:count]))
                    for t in names]
        columns.append(model["nearest"][:count])
    tiles = np.stack(columns, 1).reshape(-1, *columns[0].shape[1:])  # row-major: seed by seed
    out = _directory(store) / f"{slug(run_id)}-samples.png"
    save_grid(out, tiles, columns=len(columns))
    return out


def onestep_figure(store: Artifacts, run_id: str, table) -> Path | None:
    rows = table[(table.run == run_id) & (table.metric == "onestep_r2")]
    if not len(rows):
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for theory, data in rows.groupby("theory"):
        for source, style in (("test", "-"), ("train", "--")):
            line = data[data.source == source].sort_values("sigma")
            ax.plot(line.sigma, line.value, style, marker="o", markersize=3,
                    label=f"{theory} ({source})")
    ax.set_xscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("one-step r$^2$ vs model (median)")
    ax.set_title(run_id, fontsize=7)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, _directory(store) / f"onestep-{slug(run_id)}")


def r2_vs_n(store: Artifacts, table) -> Path | None:
    rows = table[table.metric == "trajectory_r2"].dropna(subset=["n"])
    if not len(rows):
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for (arch, theory), data in rows.groupby(["arch", "theory"]):
        line = data.astype({"n": float}).groupby("n", as_index=False)["value"].mean()
        ax.plot(line.n, line.value, marker="o", markersize=3, label=f"{arch}: {theory}")
    ax.set_xscale("log")
    ax.set_xlabel("N (training images)")
    ax.set_ylabel("trajectory r$^2$ (median over samples)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, _directory(store) / "r2_vs_n")


def draw(store: Artifacts, run_ids) -> list[Path]:
    table = read_table(store.tables_dir / artifacts.COMPARE_TABLE)
    out = [sample_grid(store, r) for r in run_ids]
    if table is not None:
        out += [onestep_figure(store, r, table) for r in run_ids]
        out.append(r2_vs_n(store, table))
    return [p for p in out if p is not None]
