"""The tidy table of `probe compare`, from one compare.h5 (layout: probe.formats.compare), and
its text summary.

Columns: run, arch, n, split, dataset, theory, source, sigma, step, metric, value, note
(source "" / sigma NaN / step -1 where they do not apply). Metrics:

- onestep_r2 (median over images), onestep_r2_mean, onestep_cosine (median): per theory,
  source (train, test) and sigma;
- patch: the ls/els patch used at each sigma; calibration_r2: the best median r^2 there;
- trajectory_r2: median over samples of the final-sample r^2 (Kamb & Ganguli's Table 1
  metric), trajectory_r2_mean, trajectory_cosine (median); step_r2: median over samples of
  the denoised estimates' r^2 at every step (sigma = that step's noise level).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from probe.formats import compare as fmt
from probe.formats.h5 import decode_attrs
from probe.metrics.tables import with_run_columns

COLUMNS = ("run", "arch", "n", "split", "dataset", "theory", "source", "sigma", "step",
           "metric", "value", "note")
# Kamb & Ganguli (2024) Table 1: median r^2 of the ELS machine's samples against trained nets'
REFERENCE_R2 = {"MNIST ResNet": 0.94, "CIFAR-10 ResNet": 0.95, "CIFAR-10 UNet": 0.90,
                "CelebA ResNet": 0.96, "CelebA UNet": 0.85, "ideal score (range)": "0.41-0.61"}


def table_from_file(path: str | Path) -> pd.DataFrame:
    rows = []

    def add(theory, metric, value, source="", sigma=math.nan, step=-1, note=""):
        rows.append({"theory": theory, "source": source, "sigma": float(sigma),
                     "step": int(step), "metric": metric, "value": float(value), "note": note})

    with h5py.File(path, "r") as f:
        attrs = decode_attrs(f.attrs)
        for theory in sorted(f.get(fmt.ONESTEP, {})):
            g = f[fmt.key(fmt.ONESTEP, theory)]
            r2, cos, sigmas, patches = g["r2"][:], g["cosine"][:], g["sigmas"][:], g["patches"][:]
            for gi, source in enumerate(fmt.SOURCES):
                for si, sigma in enumerate(sigmas):
                    add(theory, "onestep_r2", np.median(r2[gi, si]), source, sigma,
                        note="median over images")
                    add(theory, "onestep_r2_mean", r2[gi, si].mean(), source, sigma)
                    add(theory, "onestep_cosine", np.median(cos[gi, si]), source, sigma)
            for sigma, patch in zip(sigmas, patches):
                if patch:
                    add(theory, "patch", patch, sigma=sigma)
        for theory in sorted(f.get(fmt.CALIBRATION, {})):
            g = f[fmt.key(fmt.CALIBRATION, theory)]
            for sigma, best in zip(g["sigmas"][:], g["r2"][:].max(1)):
                add(theory, "calibration_r2", best, "train", sigma,
                    note="best median r^2 over candidate patches")
        model_key = fmt.key(fmt.TRAJECTORY, fmt.MODEL)
        step_sigmas = f[model_key]["step_sigmas"][:] if model_key in f else []
        for theory in sorted(f.get(fmt.TRAJECTORY, {})):
            if theory == fmt.MODEL:
                continue
            g = f[fmt.key(fmt.TRAJECTORY, theory)]
            r2 = g["r2"][:]
            add(theory, "trajectory_r2", np.median(r2),
                note=f"median over {len(r2)} samples from the same noise (Kamb & Ganguli)")
            add(theory, "trajectory_r2_mean", r2.mean())
            add(theory, "trajectory_cosine", np.median(g["cosine"][:]))
            for step, values in enumerate(g["step_r2"][:]):
                add(theory, "step_r2", np.median(values), sigma=step_sigmas[step], step=step,
                    note="denoised estimates, median over samples")
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in
                                     ("run", "arch", "n", "split", "dataset")])
    return with_run_columns(df, attrs, COLUMNS)


def text_report(table: pd.DataFrame) -> str:
    """Per run and theory: trajectory r^2 (median) and one-step r^2 on held-out images."""
    lines = [f"{'run':44s} {'N':>6s} {'theory':>10s} {'trajectory r2':>13s} "
             f"{'one-step r2 (test, mean over sigma)':>36s}"]
    for (run, theory), rows in table.groupby(["run", "theory"], sort=False):
        traj = rows.loc[rows.metric == "trajectory_r2", "value"]
        one = rows.loc[(rows.metric == "onestep_r2") & (rows.source == "test"), "value"]
        n = rows.n.iloc[0]
        lines.append(f"{run:44s} {'?' if pd.isna(n) else int(n):>6} {theory:>10s} "
                     f"{traj.iloc[0] if len(traj) else math.nan:13.3f} "
                     f"{one.mean() if len(one) else math.nan:36.3f}")
    lines.append("Kamb & Ganguli Table 1 (ELS vs trained nets, median r2): " + ", ".join(
        f"{k} {v}" for k, v in REFERENCE_R2.items()))
    return "\n".join(lines)
