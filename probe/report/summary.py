"""`probe report`: the cross-probe joins (probe.report.joins), then one markdown summary of
every table under tables/, plus the figures' list.

Reads only files: each table's values are averaged per model (arch, N, split, window) and metric,
so the numbers a figure shows can be read off as text too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probe import artifacts
from probe.artifacts import Artifacts
from probe.metrics.tables import read_table
from probe.report.joins import build_joins

# table -> the metrics worth a line in the summary (all others stay in the table files)
HEADLINES = {
    "generalization": ("psnr_gap_mean", "memorized_fraction_normalised", "memorized_fraction",
                       "similarity_normalised_median", "reproducibility", "psnr_train",
                       "psnr_test", "fid"),
    "locality": ("distance_px", "mass_r1", "entropy", "radius90"),
    "basis": ("harmonicity_eigen", "trace", "asymmetry", "linearity", "eigen_below_half",
              "memorization_cos", "agreement_split"),
    "attribution": ("radius_50", "radius_90", "mean_distance", "head_importance"),
}
MODEL = ["arch", "n", "split", "window", "windows"]


def summarize(df: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Mean value per model x metric, models as rows, metrics as columns."""
    if "metric" not in df.columns or "value" not in df.columns:
        return pd.DataFrame()
    keep = df[df["metric"].isin(metrics)] if metrics else df
    if keep.empty:
        keep = df
    index = [c for c in MODEL if c in keep.columns and keep[c].notna().any()]
    if not index:
        index = ["run"]
    keep = keep.assign(**{c: keep[c].astype(str) for c in index})
    wide = keep.pivot_table(index=index, columns="metric", values="value", aggfunc="mean")
    order = [m for m in metrics if m in wide.columns] + \
        [m for m in wide.columns if m not in metrics]
    return wide[order[: max(len(metrics), 6)]].reset_index()


def headline(df: pd.DataFrame) -> list[str]:
    """The report's first lines, in words: per architecture and N, how many samples copy a
    training image, how alike the split-a and split-b models' samples are, and the PSNR gap."""
    lines = []
    if df is None or df.empty or "memorized_fraction_normalised" not in set(df["metric"]):
        return lines
    df = df[df["n"].notna()]
    for (arch, n), g in df.groupby(["arch", "n"], sort=True):
        def mean(metric, g=g):
            values = g.loc[g["metric"] == metric, "value"]
            return float(values.mean()) if len(values) else float("nan")

        copies, l2 = mean("memorized_fraction_normalised"), mean("memorized_fraction")
        similarity, gap = mean("similarity_normalised_median"), mean("psnr_gap_mean")
        text = (f"- N = {int(n)} ({arch}): {copies:.0%} of samples copy a training image "
                f"(nearest-neighbour ratio < 1/3 on normalised images, blind to contrast; "
                f"{l2:.0%} by plain l2)")
        if similarity == similarity:
            text += (f"; split-a and split-b models sampled from the same noise agree at a "
                     f"median normalised cosine of {similarity:.2f}")
        lines.append(text + f"; PSNR gap {gap:.2f} dB.")
    return lines


def _markdown(df: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _with_runs(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """`table` (one row per model) with a last column naming the runs each row averages."""
    index = [c for c in table.columns if c in MODEL]
    if "run" not in df.columns or not index:
        return table
    keyed = df.assign(**{c: df[c].astype(str) for c in index})
    runs = keyed.groupby(index)["run"].agg(lambda r: " ".join(sorted(set(r)))).rename("runs")
    return table.merge(runs.reset_index(), on=index, how="left")


def build_report(store: Artifacts) -> tuple[Path, str]:
    """report.md and report.html from every table and figure; returns the markdown's path and
    text."""
    from probe.report.attribution_figures import heads_figure
    from probe.report.html import write_html

    build_joins(store)
    heads_figure(store)  # the one figure that needs two probes' tables
    words = headline(read_table(store.table(artifacts.GENERALIZATION_TABLE)))
    tables: list[tuple[str, pd.DataFrame]] = []
    run_ids: set[str] = set()
    for name, metrics in HEADLINES.items():
        df = read_table(store.tables_dir / name)
        if df is None or df.empty:
            continue
        table = summarize(df, metrics)
        if table.empty:
            continue
        run_ids |= set(df["run"].astype(str)) if "run" in df.columns else set()
        tables.append((f"{name} (mean over images, sigmas, layers, heads)",
                       _with_runs(df, table)))
    gap = read_table(store.table(artifacts.LOCALITY_GAP_TABLE))
    if gap is not None and len(gap):
        overall = gap[gap["sigma"].isna()].pivot_table(index=["arch", "layer"], columns="metric",
                                                       values="rho").reset_index()
        tables.append(("attention locality vs PSNR gap (Spearman rho across runs, over all "
                       "sigmas)", overall))
    figures = sorted(store.figures_dir.rglob("*.png")) if store.figures_dir.is_dir() else []
    sections = ["# probe report", ""]
    if words:
        sections += [*words, ""]
    for title, table in tables:
        source = title.split(" ")[0] if not title.startswith("attention locality") \
            else artifacts.LOCALITY_GAP_TABLE
        sections += [f"## {title}", "", _markdown(table.drop(columns="runs", errors="ignore")),
                     "", f"Full table: `tables/{source}.csv`", ""]
    if figures:
        sections += ["## figures", ""]
        sections += [f"- `{p.relative_to(store.root)}`" for p in figures]
        sections.append("")
    if len(sections) == 2:
        sections.append("No tables yet: run a probe (attention-locality, jacobian-basis, "
                        "generalization, attribution) first.")
    text = "\n".join(sections)
    path = store.root / artifacts.REPORT_MD
    artifacts.write_text(path, text + "\n")
    write_html(store, words, tables, figures, run_ids)
    return path, text
