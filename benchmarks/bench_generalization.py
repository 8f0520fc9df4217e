"""Generalization probe speed: exact nearest neighbours and DDIM sampling throughput.

Nearest neighbours (one process, interleaved rounds, medians): probe.metrics.memorization's
chunked float32 matmul + exact float64 re-ranking against scikit-learn's
`NearestNeighbors(algorithm="brute")` on the same float32 rows: 32x32x1 natural-image patches
(scikit-image's shipped photos, the `patches` data set) flattened to 1024-d in [-1, 1],
10^4 and 10^5 training rows, 256 and 1000 queries (patches of other seeds), k = 2 (the
nearest-neighbour ratio) and k = 50 (Carlini et al.'s ratio; what the probe asks for). Each
round runs every case once in turn, so CPU contention hits both alike. "identical" counts
neighbour slots where both return the same row, or rows whose exact (float64) distances agree
to float32 precision (1e-6): duplicated patches tie, and ties may be ordered differently.
Target: >= 5x faster. With a GPU the same search also runs there (device="cuda").

Sampling: images/s of DDIM-50 (`probe sample --sampler ddim --steps 50`) for a DiT-S/2 (depth
12, width 384, 6 heads) on 32x32x1, against the same number of bare denoiser calls (the
sampler's own overhead is the ratio).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from benchmarks.common import Row, Timing, print_table, quick, write_results


def _patches(count: int, seed: int) -> np.ndarray:
    from probe.config import DataConfig
    from probe.data.sources import patches

    src = patches(DataConfig(dataset="patches", size=32, count=count, generator_seed=seed))
    gray = np.stack([np.asarray(item.load()) for item in src.items]).mean(-1)
    return (gray.reshape(count, -1) / 127.5 - 1).astype(np.float32)


def _identical(ours, sk, queries, reference) -> float:
    """Share of neighbour slots with the same row, or a row at the same distance (ties)."""
    same = ours == sk
    for qi, slot in zip(*np.nonzero(~same)):
        q = queries[qi].astype(np.float64)
        d_ours = np.linalg.norm(q - reference[ours[qi, slot]].astype(np.float64))
        d_sk = np.linalg.norm(q - reference[sk[qi, slot]].astype(np.float64))
        same[qi, slot] = abs(d_ours - d_sk) <= 1e-6 * max(1.0, d_ours)
    return float(same.mean())


def _interleaved(cases: dict, repeats: int) -> dict[str, Timing]:
    """Run every case once per round, in turn, after one warm-up each; medians per case."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(t), min(t), max(t), repeats)
            for name, t in times.items()}


def _compare(queries: np.ndarray, reference: np.ndarray, k: int, repeats: int) -> list[Row]:
    from sklearn.neighbors import NearestNeighbors

    from probe.metrics.memorization import nearest_neighbours

    results = {}

    def ours():
        results["ours"] = nearest_neighbours(torch.from_numpy(queries),
                                             torch.from_numpy(reference), k)[0].numpy()

    def sklearn():
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference)
        results["sklearn"] = nn.kneighbors(queries, return_distance=False)

    cases = {"ours": ours, "sklearn": sklearn}
    if torch.cuda.is_available():  # the same code with its matmuls on the GPU
        def ours_cuda():
            results["ours_cuda"] = nearest_neighbours(torch.from_numpy(queries),
                                                      torch.from_numpy(reference), k,
                                                      device="cuda")[0].numpy()
        cases["ours_cuda"] = ours_cuda
    t = _interleaved(cases, repeats)
    same = _identical(results["ours"], results["sklearn"], queries, reference)
    case = f"N={len(reference)} Q={len(queries)} k={k}"
    rows = [Row(f"nn chunked matmul {case}", t["ours"].median_s, "s", t["ours"]),
            Row(f"nn sklearn brute  {case}", t["sklearn"].median_s, "s", t["sklearn"]),
            Row(f"nn speedup        {case}", t["sklearn"].median_s / t["ours"].median_s, "x",
                note=f"identical neighbours: {same:.4%}")]
    if "ours_cuda" in t:
        same = _identical(results["ours_cuda"], results["sklearn"], queries, reference)
        rows.append(Row(f"nn speedup (cuda) {case}",
                        t["sklearn"].median_s / t["ours_cuda"].median_s, "x",
                        t["ours_cuda"], note=f"identical neighbours: {same:.4%}"))
    return rows


def neighbours(sizes, query_counts, ks, repeats: int) -> list[Row]:
    reference, queries = _patches(max(sizes), 0), _patches(max(query_counts), 1)
    return [row for n in sizes for count in query_counts for k in ks
            for row in _compare(queries[:count], reference[:n], k, repeats)]


def sampling(batch: int, steps: int, repeats: int) -> list[Row]:
    from probe.config import ModelConfig
    from probe.diffusion.samplers import sample_from_seeds
    from probe.models import zoo
    from probe.models.denoiser import Denoiser

    torch.manual_seed(0)
    cfg = ModelConfig(arch="dit-s/2", image_size=32, channels=1)
    denoiser = Denoiser(zoo.build(cfg), "ddpm", 1, 32).eval().requires_grad_(False)
    seeds = [(0, i) for i in range(batch)]
    x = torch.randn(batch, 1, 32, 32)

    def ddim():
        sample_from_seeds(denoiser, seeds, "ddim", steps)

    @torch.no_grad()
    def bare():
        for _ in range(steps):
            denoiser(x, 1.0)

    timings = _interleaved({"ddim": ddim, "bare": bare}, repeats)
    t = timings["ddim"]
    t_bare = timings["bare"].median_s
    return [Row(f"DDIM-{steps} DiT-S/2 32x32x1 batch {batch}", batch / t.median_s, "images/s",
                t, note=f"torch threads {torch.get_num_threads()}"),
            Row(f"DDIM-{steps} time / {steps} bare denoiser calls", t.median_s / t_bare, "x",
                note="sampler overhead")]


def main() -> None:
    if quick():
        params = dict(sizes=(10_000,), query_counts=(256,), ks=(2, 50), repeats=1, batch=2,
                      steps=5, sample_repeats=1)
    else:
        # batch 4: a DiT-S/2 forward at 32x32 is ~23 GFLOP per image, seconds on a shared CPU
        params = dict(sizes=(10_000, 100_000), query_counts=(256, 1000), ks=(2, 50),
                      repeats=3, batch=4, steps=50, sample_repeats=2)
    rows = neighbours(params["sizes"], params["query_counts"], params["ks"], params["repeats"])
    rows += sampling(params["batch"], params["steps"], params["sample_repeats"])
    print_table("generalization: nearest neighbours and sampling", rows)
    write_results("generalization", rows, params)


if __name__ == "__main__":
    main()
