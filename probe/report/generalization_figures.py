"""Figures of `probe generalization`, drawn from its files only (generalization.h5 per run and
tables/generalization): nothing here computes a metric.

- sample pairs: same-noise samples of two models trained on disjoint sets, each above its
  nearest training image (Kadkhodaie et al., Fig. 2);
- similarity histograms per N: cosine between the two models' samples, and between each
  sample and its nearest training image;
- PSNR gap vs sigma, one panel per architecture, one line per N;
- PSNR gap (mean over sigma) vs N, one line per architecture.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from probe import artifacts  # noqa: E402
from probe.artifacts import Artifacts  # noqa: E402
from probe.formats.h5 import attr_n  # noqa: E402
from probe.metrics.tables import read_table  # noqa: E402
from probe.report.save import save_figure_png, slug  # noqa: E402

H5, TABLE = artifacts.GENERALIZATION_H5, artifacts.GENERALIZATION_TABLE


def _h5_paths(store: Artifacts, runs) -> dict[str, Path]:
    paths = {run: store.probe_dir(run) / H5 for run in runs}
    return {run: p for run, p in paths.items() if p.is_file()}


def _arch(path: Path) -> str:
    with h5py.File(path, "r") as f:
        return str(f.attrs.get("arch", ""))


def _pairs(paths: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(split-a-ish run, other run, N) for every pair group found, each pair once."""
    seen, out = set(), []
    for run, path in paths.items():
        with h5py.File(path, "r") as f:
            if "pairs" not in f:
                continue
            split, n = str(f.attrs.get("split", "")), attr_n(f.attrs) or 0
            for other, group in f["pairs"].items():
                key = frozenset((run, other))
                if key in seen or other not in paths:
                    continue
                seen.add(key)
                first = (run, other) if split <= str(group.attrs.get("other_split", "")) \
                    else (other, run)
                out.append((*first, n))
    return sorted(out, key=lambda p: (p[2], p[0]))


def _gray(img: np.ndarray):
    return (img[..., 0], "gray") if img.shape[-1] == 1 else (img, None)


def sample_pairs_figure(store: Artifacts, runs, path: Path, count: int = 8) -> Path | None:
    """Kadkhodaie et al. Fig. 2: per pair (by N), rows model A's samples, their nearest
    training images, model B's samples from the same noise, theirs. "Nearest" is the training
    image nearest after normalising both (blind to the contrast a short run gets wrong;
    probe.metrics.memorization)."""
    paths = _h5_paths(store, runs)
    pairs = _pairs(paths)
    if not pairs:
        return None
    rows = []
    for a, b, n in pairs:
        for run in (a, b):
            with h5py.File(paths[run], "r") as f:
                k = min(count, len(f["samples/uint8"]))
                split = str(f.attrs.get("split", "")) or run[:24]
                rows.append((f"N={n}, model {split}:\nsamples", f["samples/uint8"][:k]))
                rows.append(("its nearest\ntraining images",
                             f["neighbours/nearest_image_normalised"][:k]))
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.0 * cols + 1.5, 1.05 * len(rows)),
                             squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                img, cmap = _gray(images[j])
                ax.imshow(img, cmap=cmap, vmin=0, vmax=255)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    with h5py.File(paths[pairs[0][0]], "r") as f:
        arch = str(f.attrs.get("arch", ""))
    fig.suptitle(f"{arch}: same noise, models a and b trained on disjoint sets of N images; "
                 "each sample above its nearest training image", fontsize=8)
    return save_figure_png(fig, path)


def similarity_histograms_figure(store: Artifacts, runs, path: Path) -> Path | None:
    """Per N: the normalised cosine of model A's and model B's samples from the same noise, and
    of each sample with its nearest training image."""
    paths = _h5_paths(store, runs)
    by_n: dict[int, dict[str, list]] = {}
    for a, b, n in _pairs(paths):
        with h5py.File(paths[a], "r") as f:
            by_n.setdefault(n, {"pair": [], "nn": []})["pair"].append(
                f[f"pairs/{b}/normalised"][:])
    for p in paths.values():
        with h5py.File(p, "r") as f:
            n = attr_n(f.attrs) or 0
            by_n.setdefault(n, {"pair": [], "nn": []})["nn"].append(
                f["neighbours/normalised_cosines"][:, 0])
    if not by_n:
        return None
    ns = sorted(by_n)
    fig, axes = plt.subplots(1, len(ns), figsize=(2.6 * len(ns), 2.2), squeeze=False,
                             sharey=True)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, n in zip(axes[0], ns):
        for key, label, color in (("pair", "model A vs model B", "tab:blue"),
                                  ("nn", "sample vs nearest training", "tab:orange")):
            if by_n[n][key]:
                values = np.clip(np.concatenate(by_n[n][key]), bins[0], bins[-1])
                ax.hist(values, bins=bins, alpha=0.6, label=label, color=color, density=True)
        ax.set_title(f"N = {n}", fontsize=8)
        ax.set_xlabel("cosine of normalised images", fontsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper left")
    return save_figure_png(fig, path)


def _psnr_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    return table[table.metric == metric].copy()


def psnr_gap_vs_sigma_figure(table: pd.DataFrame, path: Path) -> Path | None:
    df = _psnr_rows(table, "psnr_gap")
    if df.empty:
        return None
    archs = sorted(df.arch.unique())
    ns = sorted(df.n.unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(archs), figsize=(3.2 * len(archs), 2.6), squeeze=False,
                             sharey=True)
    for ax, arch in zip(axes[0], archs):
        for i, n in enumerate(ns):
            sub = df[(df.arch == arch) & (df.n == n)]
            for j, (_, rows) in enumerate(sub.groupby("run")):
                rows = rows.sort_values("sigma")
                ax.plot(rows.sigma, rows.value, marker="o", markersize=3,
                        color=cmap(i / max(1, len(ns) - 1)), label=f"N={n}" if j == 0 else None)
        ax.axhline(0, color="gray", linewidth=0.6)
        ax.set_xscale("log")
        ax.set_title(arch, fontsize=8)
        ax.set_xlabel("noise level sigma ([-1, 1] scale)", fontsize=7)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("PSNR gap, train - test (dB)", fontsize=7)
    return save_figure_png(fig, path)


def psnr_gap_vs_n_figure(table: pd.DataFrame, path: Path) -> Path | None:
    df = _psnr_rows(table, "psnr_gap_mean")
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    for arch, rows in sorted(df.groupby("arch")):
        ax.scatter(rows.n, rows.value, s=10)
        mean = rows.groupby("n").value.mean()
        ax.plot(mean.index, mean.values, marker="o", markersize=3, label=arch)
    ax.axhline(0, color="gray", linewidth=0.6)
    if df.n.max() > 10 * max(1, df.n.min()):
        ax.set_xscale("log")
    ax.set_xlabel("training set size N", fontsize=7)
    ax.set_ylabel("mean PSNR gap over sigma (dB)", fontsize=7)
    ax.legend(fontsize=6)
    return save_figure_png(fig, path)


def draw_all(store: Artifacts, runs=None) -> list[Path]:
    """Every generalization figure for `runs` (default: all in the table) under figures/."""
    table = read_table(store.tables_dir / TABLE)
    if table is None or table.empty:
        return []
    if runs is not None:
        table = table[table.run.isin(list(runs))]
    runs = sorted(table.run.unique())
    out = store.figures_dir
    by_arch: dict[str, list[str]] = {}
    for run, path in _h5_paths(store, runs).items():
        by_arch.setdefault(_arch(path), []).append(run)
    drawn = [sample_pairs_figure(store, arch_runs, out / (
        "generalization-sample-pairs.png" if len(by_arch) == 1
        else f"generalization-sample-pairs_{slug(arch)}.png"))
        for arch, arch_runs in sorted(by_arch.items())]
    drawn += [
        similarity_histograms_figure(store, runs, out / "generalization-similarity.png"),
        psnr_gap_vs_sigma_figure(table, out / "generalization-psnr-gap-vs-sigma.png"),
        psnr_gap_vs_n_figure(table, out / "generalization-psnr-gap-vs-n.png"),
    ]
    return [p for p in drawn if p is not None]
