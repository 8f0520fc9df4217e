"""GAHB metrics of the Jacobian bases in probes/<run-id>/jacobian.h5 -> tables/basis.

Is a denoiser's adaptive basis a geometry-adaptive harmonic basis (Kadkhodaie et al.; An et al.
find it is for a UNet and is not for a DiT)? One number per question, per run x image x sigma.

The table is tidy and LONG: columns run, dataset, arch, n, split, objective, image, sigma,
method, d, k, metric, value, peer (peer: the other run of a pairwise metric, else ""). Metrics:

- `trace`, `asymmetry`, `linearity`: the group attrs (exact with `full`, Hutchinson estimates of
  trace and asymmetry with `lanczos`).
- `harmonicity_eigen`, `harmonicity_singular`: Spearman correlation between rank (1 = largest
  eigenvalue / singular value) and dominant spatial frequency (the radial centroid of the 2-D
  power spectrum, in cycles per pixel) of the top-k eigenvectors / left singular vectors. A
  harmonic basis orders itself from coarse to fine: strongly positive.
- `eigen_below_half`: how many leading eigenvalues stay >= 0.5 (the index of the first below;
  NaN when all stored ones stay above, as can happen with lanczos' top k).
- `eigen_decay`, `projection_decay`: alpha of a power-law fit |v_i| ~ i^-alpha (least squares in
  log-log over the top k) to the eigenvalues and to |<x, e_i>| (x the clean image).
- `clean_energy_topk`: ||P_k x||^2 / ||x||^2, the share of the clean image the top-k basis spans.
- `memorization_cos`: the largest |cosine| between one of the top MEMORIZATION_TOP eigenvectors
  and any training image of the run's subset (`memorization_cos_centred`: both with the
  subset's mean image removed; the raw one is dominated by the mean for small N).
- `agreement_split` (peer = the twin): mean cosine of the principal angles between the two
  runs' top-k eigenvector subspaces at the same y. Pairs form automatically among the runs
  given: same data (hash), N, architecture, objective and windows, splits a and b.
- `agreement_arch` (peer = the other architecture): the same, for runs of the same data, N,
  split and objective with different architectures (UNet vs DiT). Both rows of a pair are
  written (one per run), and only (image, sigma) groups present in both with the same noisy
  input are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats

from probe.formats.jacobian import read_groups

MEMORIZATION_TOP = 8  # eigenvectors compared with the training images
HALF = 0.5  # shrinkage threshold of `eigen_below_half`
TRAIN_CHUNK = 2048  # training images read at once for the memorization signature
ID_COLUMNS = ("run", "dataset", "arch", "n", "split", "objective", "image", "sigma", "method",
              "d", "k")


# ------------------------------------------------------------------------- array -> number


def dominant_frequency(vectors: np.ndarray) -> np.ndarray:
    """[m, C, H, W] -> [m]: radial centroid of each vector's 2-D power spectrum (summed over
    channels), in cycles per pixel (0 = constant, sqrt(2)/2 = the checkerboard)."""
    vectors = np.asarray(vectors, np.float64)
    power = (np.abs(np.fft.fft2(vectors)) ** 2).sum(axis=1)  # [m, H, W]
    h, w = power.shape[-2:]
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    total = power.sum(axis=(1, 2))
    return (power * radius).sum(axis=(1, 2)) / np.where(total > 0, total, 1)


def harmonicity(vectors: np.ndarray) -> float:
    """Spearman correlation between rank and dominant frequency of [m, C, H, W] vectors."""
    freq = dominant_frequency(vectors)
    if len(freq) < 2 or np.ptp(freq) <= 1e-12 * max(freq.max(), 1e-12):  # all alike: no order
        return float("nan")
    return float(scipy.stats.spearmanr(np.arange(len(freq)), freq).statistic)


def threshold_index(values: np.ndarray, level: float = HALF) -> float:
    """Index of the first value below `level` (= how many lead it); NaN if none is below."""
    below = np.flatnonzero(np.asarray(values) < level)
    return float(below[0]) if len(below) else float("nan")


def decay_exponent(values: np.ndarray) -> float:
    """alpha of |v_i| ~ c i^-alpha, fitted in log-log over the entries with |v_i| > 0."""
    values = np.abs(np.asarray(values, np.float64))
    index = np.arange(1, len(values) + 1)
    keep = values > 0
    if keep.sum() < 2:
        return float("nan")
    slope = np.polyfit(np.log(index[keep]), np.log(values[keep]), 1)[0]
    return float(-slope)


def subspace_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of the principal angles between span(a) and span(b), columns [d, k]."""
    return float(np.cos(scipy.linalg.subspace_angles(a, b)).mean())


def _abs_cosines(vectors: np.ndarray, images: np.ndarray) -> np.ndarray:
    """|cos| between every row of `images` [N, d] and every column of `vectors` [d, m]: [N, m]."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=0, keepdims=True), 1e-300)
    x = images / np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-300)
    return np.abs(x @ v)


def memorization_signature(vectors: np.ndarray, chunks: Iterable[np.ndarray],
                           mean: np.ndarray | None = None) -> float:
    """max |cos| between top eigenvectors [d, m] and training images streamed as [n, d] chunks
    (minus `mean` when given)."""
    best = 0.0
    for chunk in chunks:
        chunk = chunk if mean is None else chunk - mean
        best = max(best, float(_abs_cosines(vectors, chunk).max()))
    return best


# ----------------------------------------------------------------------- group -> metrics


def group_metrics(group: dict) -> dict[str, float]:
    """The single-run metrics of one (image, sigma) group of jacobian.h5."""
    shape = group["clean"].shape  # [C, H, W]
    evecs, evals = group["eigenvectors"], group["eigenvalues"]
    k = evecs.shape[1]
    clean = group["clean"].reshape(-1).astype(np.float64)
    coeffs = evecs.T.astype(np.float64) @ clean
    def as_images(columns: np.ndarray) -> np.ndarray:  # [d, m] -> [m, C, H, W]
        return columns.T.reshape(-1, *shape)

    return {
        "trace": float(group["trace"]), "asymmetry": float(group["asymmetry"]),
        "linearity": float(group["linearity"]),
        "harmonicity_eigen": harmonicity(as_images(evecs)),
        "harmonicity_singular": harmonicity(as_images(group["left_singular_vectors"])),
        "eigen_below_half": threshold_index(evals),
        "eigen_decay": decay_exponent(evals[:k]),
        "projection_decay": decay_exponent(coeffs),
        "clean_energy_topk": float((coeffs**2).sum() / max((clean**2).sum(), 1e-300)),
    }


# ------------------------------------------------------------------------------- the table


def _identity(run) -> dict:
    return {"run": run.run_id, "dataset": run.dataset, "arch": run.arch,
            "n": run.n, "split": run.split, "objective": run.objective}


def _training_chunks(run) -> Callable[[], Iterable[np.ndarray]]:
    indices = run.train_indices

    def chunks():
        for start in range(0, len(indices), TRAIN_CHUNK):
            part = indices[start:start + TRAIN_CHUNK]
            yield run.images(part).reshape(len(part), -1).double().numpy()

    return chunks


def memorization(run, vector_sets: list[np.ndarray]) -> list[tuple[float, float]]:
    """(memorization_cos, memorization_cos_centred) for each [d, m] set of top eigenvectors,
    reading the run's training images twice in all (once for their mean), whatever the count."""
    chunks = _training_chunks(run)
    total, count = 0.0, 0
    for chunk in chunks():
        total, count = total + chunk.sum(0), count + len(chunk)
    mean = total / max(count, 1)
    vectors = np.concatenate(vector_sets, axis=1)
    raw = np.zeros(vectors.shape[1])
    centred = np.zeros(vectors.shape[1])
    for chunk in chunks():
        raw = np.maximum(raw, _abs_cosines(vectors, chunk).max(0))
        centred = np.maximum(centred, _abs_cosines(vectors, chunk - mean).max(0))
    bounds = np.cumsum([0] + [v.shape[1] for v in vector_sets])
    return [(float(raw[a:b].max()), float(centred[a:b].max()))
            for a, b in zip(bounds[:-1], bounds[1:])]


def pairs(runs) -> list[tuple[str, object, object]]:
    """(metric, run, peer) for every automatic pairing among `runs` (see the module doc)."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            same_data = (a.data_sha256 == b.data_sha256 and a.n is not None and a.n == b.n
                         and a.objective == b.objective)
            if not same_data:
                continue
            same_model = a.arch == b.arch and a.windows == b.windows
            if same_model and {a.split, b.split} == {"a", "b"}:
                out.append(("agreement_split", a, b))
            elif a.arch != b.arch and a.split == b.split:
                out.append(("agreement_arch", a, b))
    return out


def _rows(ident: dict, group: dict, metrics: dict[str, float], peer: str = "") -> list[dict]:
    base = {**ident, "image": int(group["image"]), "sigma": float(group["sigma"]),
            "method": str(group["method"]), "d": int(group["d"]), "k": int(group["k"])}
    return [{**base, "metric": name, "value": float(value), "peer": peer}
            for name, value in metrics.items()]


def basis_table(runs, paths: list[Path]) -> pd.DataFrame:
    """Long-format GAHB metrics of `runs` (Runs) from their jacobian.h5 files `paths`. The
    memorization signature needs training images: NaN for a run without them."""
    rows: list[dict] = []
    groups = {}
    for run, path in zip(runs, paths):
        groups[run.run_id] = {(g["image"], g["sigma"]): g for g in read_groups(path)}
        found = list(groups[run.run_id].values())
        top = [g["eigenvectors"][:, :MEMORIZATION_TOP].astype(np.float64) for g in found]
        signatures = memorization(run, top) if found and len(run.train_indices) else \
            [(np.nan, np.nan)] * len(found)
        for g, (raw, centred) in zip(found, signatures):
            metrics = group_metrics(g)
            metrics["memorization_cos"], metrics["memorization_cos_centred"] = raw, centred
            rows += _rows(_identity(run), g, metrics)
    for metric, a, b in pairs(runs):
        for key in sorted(set(groups[a.run_id]) & set(groups[b.run_id])):
            ga, gb = groups[a.run_id][key], groups[b.run_id][key]
            if not np.allclose(ga["noisy"], gb["noisy"]):  # not the same y: nothing to compare
                continue
            k = min(ga["eigenvectors"].shape[1], gb["eigenvectors"].shape[1])
            value = subspace_agreement(ga["eigenvectors"][:, :k].astype(np.float64),
                                       gb["eigenvectors"][:, :k].astype(np.float64))
            rows += _rows(_identity(a), ga, {metric: value}, b.run_id)
            rows += _rows(_identity(b), gb, {metric: value}, a.run_id)
    columns = [*ID_COLUMNS, "metric", "value", "peer"]
    return pd.DataFrame(rows, columns=columns)
