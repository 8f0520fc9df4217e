"""The tidy table of `probe generalization`, from one generalization.h5
(layout: probe.formats.generalization), and its one-line-per-run text summary.

Columns: run, arch, n, split, dataset, sigma (NaN where it does not apply), metric, value,
pair, note. Metrics: psnr_train, psnr_test, psnr_gap per sigma and psnr_gap_mean (An et al.'s
PSNR gap); memorized_fraction, nn_ratio_mean, carlini_ratio, nn_cosine_mean (nearest training
images in l2 on the [-1, 1] scale) and memorized_fraction_normalised,
nn_ratio_normalised_mean, nn_normalised_cosine_mean (the contrast-robust variants, on normalised
images: probe.metrics.memorization); per pair, reproducibility and reproducible_fraction (raw
same-noise cosine) and similarity_normalised, similarity_normalised_median (the cosine of the
two normalised samples); fid, kid, precision, recall (NaN with a note when no feature extractor
was given). The report's headline uses memorized_fraction_normalised and
similarity_normalised_median (`HEADLINE`).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from probe.formats import generalization as fmt
from probe.formats.h5 import decode_attrs
from probe.metrics import memorization as mem
from probe.metrics.psnr import psnr_gap
from probe.metrics.tables import with_run_columns

COLUMNS = ("run", "arch", "n", "split", "dataset", "sigma", "metric", "value", "pair", "note")
NO_WEIGHTS = "skipped: no --fid-weights given (no feature extractor is downloaded)"
QUALITY = ("fid", "kid", "precision", "recall")
HEADLINE = ("memorized_fraction_normalised", "similarity_normalised_median")


def table_from_file(path: str | Path, threshold: float = mem.REPRODUCIBLE_THRESHOLD,
                    quality_key: str | None = None) -> pd.DataFrame:
    """Rows of one run's file: `threshold` for reproducible pairs, `quality_key` the group of
    the feature extractor in use (None: FID and friends are reported as skipped)."""
    rows = []

    def add(metric, value, sigma=math.nan, pair="", note=""):
        rows.append({"sigma": float(sigma), "metric": metric, "value": float(value),
                     "pair": pair, "note": note})

    with h5py.File(path, "r") as f:
        attrs = decode_attrs(f.attrs)
        sigmas, train, test = f["psnr/sigmas"][:], f["psnr/train"][:], f["psnr/test"][:]
        gap = psnr_gap(train, test)
        for sigma, tr, te, g in zip(sigmas, train.mean(1), test.mean(1), gap):
            add("psnr_train", tr, sigma)
            add("psnr_test", te, sigma)
            add("psnr_gap", g, sigma)
        add("psnr_gap_mean", gap.mean())
        distances = f["neighbours/l2_distances"][:]
        add("memorized_fraction", mem.memorized_fraction(distances),
            note=f"||x - NN1|| / ||x - NN2|| < {mem.NN_RATIO_THRESHOLD:.3g}")
        add("nn_ratio_mean", np.nanmean(f["neighbours/nn_ratio"][:]))
        add("carlini_ratio", f["neighbours/carlini_ratio"][:].mean(),
            note=f"mean over samples; k = {min(mem.CARLINI_K, distances.shape[1])}")
        add("nn_cosine_mean", f["neighbours/cosine_similarities"][:, 0].mean())
        normalised = f["neighbours/normalised_cosines"][:]
        add("memorized_fraction_normalised",
            mem.memorized_fraction(mem.normalised_distances(normalised)),
            note="normalised images (own mean and the data's mean image out, unit norm): "
                 f"||x - NN1|| / ||x - NN2|| < {mem.NN_RATIO_THRESHOLD:.3g}")
        add("nn_ratio_normalised_mean", np.nanmean(f["neighbours/nn_ratio_normalised"][:]))
        add("nn_normalised_cosine_mean", normalised[:, 0].mean())
        for other in sorted(f[fmt.PAIRS]) if fmt.PAIRS in f else []:
            group = f[fmt.pair_key(other)]
            cos, nor = group["cosine"][:], group["normalised"][:]
            add("reproducibility", cos.mean(), pair=other, note="mean cosine, same noise")
            add("reproducible_fraction", mem.reproducible_fraction(cos, threshold),
                pair=other, note=f"cosine > {threshold:g}")
            add("similarity_normalised", nor.mean(), pair=other,
                note="mean cosine of normalised same-noise samples")
            add("similarity_normalised_median", np.median(nor), pair=other,
                note="median cosine of normalised same-noise samples")
        if quality_key is None or quality_key not in f:
            for metric in QUALITY:
                add(metric, math.nan, note=NO_WEIGHTS)
        else:
            g = f[quality_key]
            note = f"{g.attrs['extractor']}; {g.attrs['n_fake']} samples vs " \
                   f"{g.attrs['n_real']} held-out images"
            for metric in QUALITY:
                add(metric, g.attrs[metric], note=note)
    df = pd.DataFrame(rows)
    return with_run_columns(df, attrs, COLUMNS)


def text_report(table: pd.DataFrame) -> str:
    """PSNR gap and memorization per run, one line each: copies (the normalised memorized
    fraction), l2 (the plain one), Carlini's ratio, and the median normalised a/b similarity
    of its pairs."""
    lines = [f"{'run':48s} {'N':>7s} {'split':>5s} {'PSNR gap (dB)':>13s} {'copies':>7s} "
             f"{'l2':>5s} {'Carlini':>7s} {'a/b sim.':>8s} {'FID':>8s}"]

    def first(rows, metric):
        v = rows.loc[rows.metric == metric, "value"]
        return float(v.iloc[0]) if len(v) else math.nan

    for run, rows in table.groupby("run", sort=False):
        similarity = rows.loc[rows.metric == "similarity_normalised_median", "value"]
        repro_text = f"{similarity.mean():8.2f}" if len(similarity) else f"{'-':>8s}"
        fid_value = first(rows, "fid")
        fid_text = f"{fid_value:8.2f}" if math.isfinite(fid_value) else f"{'-':>8s}"
        n = rows.n.iloc[0]
        lines.append(f"{run:48s} {'?' if pd.isna(n) else int(n):>7} {rows.split.iloc[0]:>5s} "
                     f"{first(rows, 'psnr_gap_mean'):13.2f} "
                     f"{first(rows, 'memorized_fraction_normalised'):7.2f} "
                     f"{first(rows, 'memorized_fraction'):5.2f} "
                     f"{first(rows, 'carlini_ratio'):7.2f} {repro_text} {fid_text}")
    fid_rows = table[table.metric == "fid"]
    if table.metric.isin(QUALITY).any() and fid_rows.value.isna().all():
        lines.append(f"FID/KID/precision/recall {NO_WEIGHTS}")
    elif fid_rows.note.fillna("").str.startswith("fid-digits").any():
        lines.append("FID here is on fid-digits features (a classifier trained on this data "
                     "set), not FID-Inception: comparable between these runs, not with papers")
    return "\n".join(lines)
