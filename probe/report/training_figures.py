"""The memorization curves of one run, from its stats.jsonl: runs/<id>/curves.png.

Left, the training loss. Right, the denoising error (MSE on the [-1, 1] scale) at each
`--eval-every` step on fixed training images (solid) and fixed held-out images (dashed), one
colour per noise level, and the PSNR gap they make. While both fall together the model is
learning the distribution; a training curve that keeps falling while the held-out one stalls or
rises is memorization, and flat curves say the run has converged enough to be probed.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from probe import artifacts  # noqa: E402
from probe.report.save import save_figure_png  # noqa: E402


def read_stats(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / artifacts.RUN_STATS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line half-written when the run was killed
    return records


def curves_figure(run_dir: Path) -> Path | None:
    """runs/<id>/curves.png (left alone when newer than stats.jsonl), or None when the run
    logged nothing."""
    png, stats = Path(run_dir) / artifacts.RUN_CURVES, Path(run_dir) / artifacts.RUN_STATS
    if png.is_file() and stats.is_file() and png.stat().st_mtime_ns >= stats.stat().st_mtime_ns:
        return png
    records = read_stats(run_dir)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [r for r in records if "eval_train_mse" in r]
    if not losses:
        return None
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(8 if evals else 4, 3),
                             squeeze=False, layout="constrained")
    ax = axes[0, 0]
    ax.plot(*zip(*losses), color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if evals:
        ax = axes[0, 1]
        steps = [r["step"] for r in evals]
        colours = plt.get_cmap("viridis")
        sigmas = evals[-1]["eval_sigmas"]
        for i, sigma in enumerate(sigmas):
            colour = colours(i / max(1, len(sigmas) - 1))
            ax.plot(steps, [r["eval_train_mse"][i] for r in evals], "-", color=colour,
                    label=f"σ={sigma:g} train")
            if "eval_test_mse" in evals[-1]:
                ax.plot(steps, [r["eval_test_mse"][i] for r in evals], "--", color=colour,
                        label=f"σ={sigma:g} held-out")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("denoising MSE")
        gap = evals[-1].get("eval_psnr_gap")
        if gap is not None:
            ax.set_title(f"PSNR gap at the end: {gap:.2f} dB", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(Path(run_dir).name, fontsize=8)
    return save_figure_png(fig, Path(run_dir) / artifacts.RUN_CURVES)
