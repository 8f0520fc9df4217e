"""The attention-locality figures, drawn from the files only (attention.h5 and tables/locality),
saved as PNG and PDF.

Layout here, drawing in plots.py, numbers in probe.metrics: a figure function reads files,
selects, and places plots on a grid.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from probe.artifacts import Artifacts  # noqa: E402
from probe.formats.attention import query_maps, read_layers  # noqa: E402
from probe.metrics.locality import layer_means  # noqa: E402
from probe.metrics.tables import read_table  # noqa: E402
from probe.report import plots  # noqa: E402
from probe.report.save import save_figure, slug  # noqa: E402

# ------------------------------------------------------------------------- attention locality

LOCALITY_METRICS = ("distance_px", "mass_r1", "entropy", "radius90")


def _run_order(attrs: dict):
    n = attrs.get("n", "")
    return (n in ("", None), int(n) if n not in ("", None) else 0, str(attrs.get("split", "")),
            attrs["run_id"])


def attention_map_figure(paths: list[Path], query: str, sigma_index: int, stem: Path
                         ) -> Path | None:
    """An et al. Fig. 4 layout: rows = runs by N, columns = layers; each panel one query's
    attention over the layer's grid (mean over the probe's images and heads), query marked."""
    entries = []
    for path in paths:
        attrs, layers = query_maps(path, query, sigma_index)
        if layers:
            entries.append((attrs, layers))
    if not entries:
        return None
    entries.sort(key=lambda e: _run_order(e[0]))
    sigma = read_layers(paths[0])[1][sigma_index]
    rows, cols = len(entries), max(len(layers) for _, layers in entries)
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(1.25 * cols + 0.8, 1.3 * rows + 0.7))
    for r, (attrs, layers) in enumerate(entries):
        for c, layer in enumerate(layers):
            window = f", w{layer['window']}" if layer["window"] else \
                (f", p{layer['partition']}" if layer.get("partition") else "")
            plots.attention_map(layer["map"], layer["query"], axes[r, c],
                                title=f"layer {layer['layer']}{window}")
        for c in range(len(layers), cols):
            axes[r, c].axis("off")
        n = attrs.get("n", "")
        label = f"N={n} {attrs.get('split', '')}" if n not in ("", None) else attrs["run_id"]
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"{entries[0][0]['arch']}: attention of query {query} at sigma {sigma:g}",
                 fontsize=9)
    return save_figure(fig, stem)


def _metric_grid(means, draw, stem: Path, title: str, metrics=LOCALITY_METRICS) -> Path | None:
    """Rows = metrics, columns = noise levels; `draw(df, ax)` fills each panel."""
    metrics = [m for m in metrics if m in set(means["metric"])]
    sigmas = sorted(means["sigma"].unique())
    if not metrics or not sigmas:
        return None
    # Fixed margins, no layout engine: it would measure every tick label on every save.
    width, height = 3.0 * len(sigmas) + 1.6, 2.3 * len(metrics) + 0.6
    fig, axes = plt.subplots(len(metrics), len(sigmas), squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=1 - 1.4 / width, bottom=0.5 / height,
                        top=1 - 0.6 / height, wspace=0.35, hspace=0.45)
    for r, metric in enumerate(metrics):
        for c, sigma in enumerate(sigmas):
            ax = axes[r, c]
            draw(means[(means["metric"] == metric) & (means["sigma"] == sigma)], ax)
            if r == 0:
                ax.set_title(f"sigma {sigma:g}", fontsize=9)
            if c > 0:
                ax.set_ylabel("")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, stem)


def attention_locality_figures(store: Artifacts, paths: list[Path], queries=("center",)
                               ) -> list[Path]:
    """Every attention-locality figure for the probe files `paths`, per architecture:
    attention maps per query and noise level, locality vs layer per N, locality vs N per layer
    (the last two from tables/locality, so runs probed earlier are included)."""
    by_arch: dict[str, list[Path]] = {}
    for path in paths:
        by_arch.setdefault(read_layers(path)[0]["arch"], []).append(Path(path))
    table = read_table(store.tables_dir / "locality")
    out = []
    for arch, arch_paths in by_arch.items():
        base = store.figures_dir / "attention"
        sigmas = read_layers(arch_paths[0])[1]
        for query in queries:
            for si, sigma in enumerate(sigmas):
                stem = base / f"maps_{slug(arch)}_q{slug(query)}_sigma{slug(f'{sigma:g}')}"
                out.append(attention_map_figure(arch_paths, query, si, stem))
        if table is None:
            continue
        means = layer_means(table[table["arch"] == arch])
        out.append(_metric_grid(means, lambda df, ax: plots.locality_vs_layer(df, ax),
                                base / f"locality_vs_layer_{slug(arch)}",
                                f"{arch}: attention locality vs layer, per N"))
        if means["n"].notna().any():
            out.append(_metric_grid(means, lambda df, ax: plots.locality_vs_n(df, ax),
                                    base / f"locality_vs_n_{slug(arch)}",
                                    f"{arch}: attention locality vs N, per layer"))
    return [p for p in out if p is not None]
