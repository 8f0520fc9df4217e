"""Attribution summaries: receptive-field radii from maps, head importance, influence vs the
pixel nearest neighbour. Arrays in, tidy rows out; `table` reads one attribution.h5.

Receptive field of one output pixel p: the absolute attribution mass m(q) of every input pixel q
(summed over input and output channels), at Euclidean distance d(q) = ||q - p|| in pixels.

- radius_50 / radius_90: the smallest r whose disk d(q) <= r holds 50 % / 90 % of the mass
  (always one of the distances that occur, so a kernel's radius is exact, not interpolated);
- mean_distance: sum_q m(q) d(q) / sum_q m(q).

All three are in input pixels whatever the architecture (a DiT's patch, a UNet's levels), so
they compare UNet, DiT, windowed DiT, U-DiT and DiffiT, and runs across N. A map without mass
gives NaN.

Table columns: run, arch, n, split, windows, method, sigma, pixel ("x,y", or "all" for the mean
over pixels), layer, head, hook (head importance only), metric, value. `join_locality` adds
each head's attention locality to its importance rows (`probe report` joins the two tables).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from probe.formats.h5 import decode_attrs
from probe.metrics.memorization import NN_RATIO_THRESHOLD, nearest_neighbours, nn_ratio

COLUMNS = ("run", "arch", "n", "split", "windows", "method", "sigma", "pixel", "layer", "head",
           "hook", "metric", "value")
FRACTIONS = {"radius_50": 0.5, "radius_90": 0.9}
RF_METRICS = (*FRACTIONS, "mean_distance")


# ------------------------------------------------------------------------- receptive fields


def pixel_distances(height: int, width: int, y: int, x: int) -> np.ndarray:
    """[H, W] Euclidean distance of every pixel from (y, x), in pixels."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.sqrt((ys - y) ** 2 + (xs - x) ** 2)


def mass_radius(mass: np.ndarray, center: tuple[int, int], fraction: float) -> np.ndarray:
    """Smallest disk radius around `center` holding `fraction` of |mass|; mass [..., H, W]."""
    mass = np.abs(np.asarray(mass, np.float64))
    lead, (h, w) = mass.shape[:-2], mass.shape[-2:]
    dist = pixel_distances(h, w, *center).ravel()
    order = np.argsort(dist, kind="stable")
    cumulative = np.cumsum(mass.reshape(-1, h * w)[:, order], axis=1)
    total = cumulative[:, -1:]
    # Equal distances sit next to each other in `order`, so the first index that reaches the
    # fraction names a disk that holds all of its ring. The tolerance absorbs summation order.
    reached = cumulative >= fraction * total * (1 - 1e-12)
    radius = dist[order][reached.argmax(axis=1)]
    radius = np.where(total[:, 0] > 0, radius, np.nan)
    return radius.reshape(lead)


def mean_distance(mass: np.ndarray, center: tuple[int, int]) -> np.ndarray:
    """Mass-weighted mean distance from `center`, in pixels; mass [..., H, W]."""
    mass = np.abs(np.asarray(mass, np.float64))
    dist = pixel_distances(*mass.shape[-2:], *center)
    total = mass.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (mass * dist).sum(axis=(-2, -1)) / total, np.nan)


def channel_mass(maps: np.ndarray) -> np.ndarray:
    """[..., C_out, C_in, H, W] signed attributions -> [..., H, W] absolute mass."""
    return np.abs(maps).sum(axis=(-4, -3))


def summarize(mass: np.ndarray, pixels: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """mass [image, pixel, H, W] (pixel p centred on pixels[p] = (y, x)) -> metric [image, pixel]
    for every metric of RF_METRICS."""
    out = {name: np.empty(mass.shape[:2]) for name in RF_METRICS}
    for p, center in enumerate(pixels):
        for name, fraction in FRACTIONS.items():
            out[name][:, p] = mass_radius(mass[:, p], center, fraction)
        out["mean_distance"][:, p] = mean_distance(mass[:, p], center)
    return out


def pixel_label(y: int, x: int) -> str:
    return f"{x},{y}"  # the CLI's x,y order


def receptive_field_rows(meta: dict, sigma: float, pixels: list[tuple[int, int]],
                         summary: dict[str, np.ndarray]) -> list[dict]:
    """One row per pixel and metric (mean over images) plus pixel "all" (mean over both)."""
    rows = []
    for name, values in summary.items():
        for p, (y, x) in enumerate(pixels):
            rows.append({**meta, "sigma": sigma, "pixel": pixel_label(y, x), "metric": name,
                         "value": float(np.nanmean(values[:, p]))})
        rows.append({**meta, "sigma": sigma, "pixel": "all", "metric": name,
                     "value": float(np.nanmean(values))})
    return rows


# ---------------------------------------------------------------------------- head importance


def head_rows(meta: dict, sigma: float, hooks: list[str], importance: np.ndarray) -> list[dict]:
    """importance [image, layer, head] (loss increase when the head is removed) -> one row per
    layer and head, the mean over images. `layer` is the attention layer's forward-order index,
    the same index the attention-locality probe gives it."""
    mean = np.asarray(importance, np.float64).mean(axis=0)
    return [{**meta, "sigma": sigma, "pixel": "", "layer": layer, "head": head,
             "hook": hooks[layer], "metric": "head_importance", "value": float(mean[layer, head])}
            for layer in range(mean.shape[0]) for head in range(mean.shape[1])
            if not np.isnan(mean[layer, head])]  # NaN pads layers with fewer heads


def join_locality(df: pd.DataFrame, locality: pd.DataFrame | None) -> pd.DataFrame:
    """Add `locality_<metric>` columns to the head-importance rows of `df`: that head's attention
    locality from tables/locality (columns run, layer, head, metric, value, ...), joined on
    (run, layer, head) and averaged over the locality table's noise levels."""
    if locality is None or not len(locality) or not len(df):
        return df
    loc = locality[locality["run"].isin(df["run"].unique())]
    if not len(loc):
        return df
    wide = (loc.groupby(["run", "layer", "head", "metric"])["value"].mean()
            .unstack("metric").add_prefix("locality_").reset_index())
    wide = wide.astype({"layer": "int64", "head": "int64"})
    heads = df["metric"] == "head_importance"
    joined = df[heads].astype({"layer": "int64", "head": "int64"}).merge(
        wide, on=["run", "layer", "head"], how="left")
    out = pd.concat([df[~heads], joined], ignore_index=True)
    return out.astype({"layer": "Int64", "head": "Int64"})


# -------------------------------------------------------------------------------- influence


def nearest_two(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-space l2 (probe.metrics.memorization's exact search): (index of the nearest
    training image [S], the two smallest distances [S, 2], the second NaN when there is one
    training image)."""
    index, distance = nearest_neighbours(samples, train, 2, "l2")
    distance = distance.numpy()
    if distance.shape[1] == 1:
        distance = np.concatenate([distance, np.full_like(distance, np.nan)], 1)
    return index[:, 0].numpy(), distance


def influence_summary(scores: np.ndarray, nn: np.ndarray, nn_distance: np.ndarray
                      ) -> dict[str, float]:
    """scores [sample, train] (TracIn: higher = more helpful) vs the pixel nearest neighbour.

    influence_nn_agreement: share of samples whose top proponent is their nearest neighbour;
    influence_nn_rank: mean rank of the nearest neighbour among the proponents (1 = top);
    memorized_fraction: share of samples with NN ratio d1/d2 < 1/3 (copies);
    influence_nn_agreement_memorized: the agreement on those copies (NaN when there are none).
    """
    scores = np.asarray(scores, np.float64)
    rows = np.arange(len(scores))
    top = scores.argmax(axis=1)
    rank = 1 + (scores > scores[rows, nn][:, None]).sum(axis=1)
    # one training image: no second neighbour, so no ratio and no copy
    memorized = nn_ratio(nn_distance) < NN_RATIO_THRESHOLD if np.isfinite(nn_distance).all() \
        else np.zeros(len(scores), bool)
    agree = top == nn
    return {"influence_nn_agreement": float(agree.mean()),
            "influence_nn_rank": float(rank.mean()),
            "memorized_fraction": float(memorized.mean()),
            "influence_nn_agreement_memorized":
                float(agree[memorized].mean()) if memorized.any() else float("nan")}


# ------------------------------------------------------------------------------ from the file


def table(path: str | Path) -> pd.DataFrame:
    """Every summary of one attribution.h5 as a long table (COLUMNS)."""
    rows: list[dict] = []
    with h5py.File(path, "r") as f:
        a = decode_attrs(f.attrs)
        n = a.get("n", "")
        meta = {"run": str(a["run_id"]), "arch": str(a["arch"]),
                "n": None if n in ("", None) else int(n),
                "split": str(a["split"]), "windows": str(a.get("windows", ""))}
        sigmas = [float(s) for s in f["sigmas"][()]]
        pixels = [tuple(int(v) for v in p) for p in f["pixels"][()]]
        for si, sigma in enumerate(sigmas):
            group = f.get(f"rf/s{si}")
            if group is not None:
                keys = sorted(group, key=lambda k: int(k[1:]))
                mass = np.stack([channel_mass(group[k]["maps"][()]) for k in keys])
                rows += receptive_field_rows({**meta, "method": str(a["method"])}, sigma,
                                             pixels, summarize(mass, pixels))
            heads = f.get(f"heads/s{si}")
            if heads is not None:
                hooks = json.loads(heads.attrs["hooks"])
                rows += head_rows({**meta, "method": "feature-ablation"}, sigma, hooks,
                                  heads["importance"][()])
        total = f.get("influence/total")
        if total is not None:
            found = f["influence/samples"]
            summary = influence_summary(total["scores"][()], found["nn"][()],
                                        found["nn_distance"][()])
            rows += [{**meta, "method": "tracincp", "sigma": float(total.attrs["sigma"]),
                      "pixel": "", "metric": name, "value": value}
                     for name, value in summary.items()]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype({"layer": "Int64", "head": "Int64", "n": "Int64", "sigma": "float64",
                      "value": "float64"})
