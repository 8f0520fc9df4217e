"""Figures of `probe jacobian-basis`, drawn from jacobian.h5 and tables/basis only.

- `eigenvectors_<image>_<sigma>.png`: one row per run (architectures, then N), the top
  eigenvectors of (J + J^T)/2 ordered by eigenvalue (An et al. Fig. 1); colour models also as
  `..._channels.png`, each eigenvector split into its R, G, B planes.
- `spectra.png`: eigenvalues against their index, one panel per sigma, colour = N, line style =
  architecture, one thin line per probe image.
- `harmonicity.png`: harmonicity of the eigenvectors against N, one line per architecture, one
  panel per sigma (mean and spread over the probe images).

Plot functions take arrays / DataFrames and return Axes; `draw` reads the files and saves PNGs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from probe import artifacts  # noqa: E402
from probe.artifacts import Artifacts  # noqa: E402
from probe.formats.h5 import attr_n, read_attrs  # noqa: E402
from probe.formats.jacobian import read_groups  # noqa: E402
from probe.metrics.tables import read_table  # noqa: E402
from probe.report.save import save_figure_png  # noqa: E402

SHOW = 8  # eigenvectors per row of the grids
LINESTYLES = ("-", "--", ":", "-.")


def _diverging(ax, plane: np.ndarray) -> None:
    scale = float(np.abs(plane).max()) or 1.0
    ax.imshow(plane, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")


def eigenvector_grid(rows: list[dict], split_channels: bool = False) -> np.ndarray:
    """rows: [{"label", "vectors" [m, C, H, W], "eigenvalues" [m]}] -> Axes [rows, columns].

    Grey models: a diverging map per vector (red +, blue -). Colour models: the vector as an
    RGB image around mid-grey, or with `split_channels` each channel as its own diverging panel.
    """
    m = max(len(r["vectors"]) for r in rows)
    channels = max(r["vectors"].shape[1] for r in rows)
    per = channels if split_channels and channels > 1 else 1
    fig, axes = plt.subplots(len(rows), m * per, squeeze=False,
                             figsize=(1.1 * m * per + 1.5, 1.45 * len(rows) + 0.6))
    for i, row in enumerate(rows):
        for j in range(m):
            for c in range(per):
                ax = axes[i, j * per + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(row["vectors"]):
                    ax.axis("off")
                    continue
                vec = row["vectors"][j]
                if per > 1:
                    _diverging(ax, vec[c])
                    ax.set_xlabel("RGB"[c], fontsize=6)
                elif vec.shape[0] == 1:
                    _diverging(ax, vec[0])
                else:
                    scale = float(np.abs(vec).max()) or 1.0
                    ax.imshow(np.clip(0.5 + 0.5 * vec.transpose(1, 2, 0) / scale, 0, 1),
                              interpolation="nearest")
                if c == 0:
                    ax.set_title(f"{row['eigenvalues'][j]:.3g}", fontsize=7)
        axes[i, 0].set_ylabel(row["label"], fontsize=7, rotation=0, ha="right", va="center")
    return axes


def spectra(curves: list[dict]) -> np.ndarray:
    """curves: [{"sigma", "n", "arch", "eigenvalues"}] -> Axes, one panel per sigma."""
    sigmas = sorted({c["sigma"] for c in curves})
    ns = sorted({c["n"] for c in curves})
    archs = sorted({c["arch"] for c in curves})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(ns), 1)))
    fig, axes = plt.subplots(1, len(sigmas), squeeze=False, figsize=(4 * len(sigmas), 3.2))
    for ax, sigma in zip(axes[0], sigmas):
        seen = set()
        for c in (c for c in curves if c["sigma"] == sigma):
            key = (c["n"], c["arch"])
            ax.plot(np.arange(1, len(c["eigenvalues"]) + 1), c["eigenvalues"], lw=0.8,
                    color=colours[ns.index(c["n"])],
                    ls=LINESTYLES[archs.index(c["arch"]) % len(LINESTYLES)],
                    label=None if key in seen else f"{c['arch']} N={c['n']}")
            seen.add(key)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_title(f"sigma = {sigma:g}")
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("eigenvalue of (J + J^T)/2")
        ax.legend(fontsize=6)
    return axes


def harmonicity_vs_n(table: pd.DataFrame, metric: str = "harmonicity_eigen") -> np.ndarray:
    """Long basis table -> Axes: `metric` against N per architecture, one panel per sigma."""
    data = table[table["metric"] == metric]
    sigmas = sorted(data["sigma"].unique())
    fig, axes = plt.subplots(1, max(len(sigmas), 1), squeeze=False,
                             figsize=(4 * max(len(sigmas), 1), 3.2))
    for ax, sigma in zip(axes[0], sigmas):
        for arch, part in data[data["sigma"] == sigma].groupby("arch"):
            stats = part.groupby("n")["value"].agg(["mean", "min", "max"]).sort_index()
            ax.errorbar(stats.index, stats["mean"],
                        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        marker="o", capsize=2, label=arch)
        ax.set_xscale("log")
        ax.set_ylim(-1.05, 1.05)  # a rank correlation
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"sigma = {sigma:g}")
        ax.set_xlabel("training images N")
        ax.set_ylabel(f"{metric} (Spearman)")
        ax.legend(fontsize=7)
    return axes


# --------------------------------------------------------------------------- files -> files


def _save(axes: np.ndarray, path: Path, title: str = "") -> Path:
    fig = np.ravel(axes)[0].figure
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure_png(fig, path, dpi=120, bbox_inches=None)


def draw(store: Artifacts, run_ids: list[str]) -> list[Path]:
    """Every Jacobian figure for these runs, under figures/jacobian/."""
    out_dir = store.figures_dir / "jacobian"
    runs = []
    for run_id in run_ids:
        path = store.probe_file(run_id, artifacts.JACOBIAN_H5)
        if path.is_file():
            attrs = read_attrs(path)
            runs.append((attrs.get("arch", ""), attr_n(attrs) or 0, attrs.get("split", ""),
                         run_id, list(read_groups(path))))
    runs.sort(key=lambda r: r[:3])
    written = []
    keys = sorted({(g["image"], g["sigma"]) for r in runs for g in r[4]})
    for image, sigma in keys:
        rows = []
        for arch, n, split, _, groups in runs:
            for g in groups:
                if (g["image"], g["sigma"]) == (image, sigma):
                    shape = g["clean"].shape
                    vecs = g["eigenvectors"][:, :SHOW].T.reshape(-1, *shape)
                    rows.append({"label": f"{arch}\nN={n} {split}", "vectors": vecs,
                                 "eigenvalues": g["eigenvalues"][:SHOW]})
        if not rows:
            continue
        stem = f"eigenvectors_{image}_{sigma:g}"
        title = f"top eigenvectors of (J+J^T)/2, image {image}, sigma {sigma:g}"
        written.append(_save(eigenvector_grid(rows), out_dir / f"{stem}.png", title))
        if any(r["vectors"].shape[1] > 1 for r in rows):
            written.append(_save(eigenvector_grid(rows, split_channels=True),
                                 out_dir / f"{stem}_channels.png", title + " (R, G, B)"))
    curves = [{"sigma": g["sigma"], "n": n, "arch": arch, "eigenvalues": g["eigenvalues"]}
              for arch, n, _, _, groups in runs for g in groups]
    if curves:
        written.append(_save(spectra(curves), out_dir / "spectra.png"))
    table = read_table(store.table(artifacts.BASIS_TABLE))
    if table is not None:
        table = table[table["run"].isin(run_ids)]
        if len(table) and (table["metric"] == "harmonicity_eigen").any():
            written.append(_save(harmonicity_vs_n(table), out_dir / "harmonicity.png"))
    return written

