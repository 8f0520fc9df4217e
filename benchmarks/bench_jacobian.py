"""Jacobian probe: the full Jacobian (one forward on `chunk` copies of y, graph kept, d / chunk
backward passes of identity rows) against the naive per-pixel loop (one forward and one backward
per output pixel, as public reference code does), against `torch.func.vmap` over the vjp of one
forward (the other one-forward formulation), and against the floor (d backward passes at the
chosen batch over a graph built once, not timed); then Lanczos top-k against full; peak memory.

    python -m benchmarks jacobian            # writes artifacts/benchmarks/jacobian.json
    python -m benchmarks jacobian --quick    # d = 1024 only, smaller slices

Model: a 4-layer DiT (dit-tiny: depth 4, width 128, 4 heads) with 256 tokens at both sizes, so d is
what changes: dit-tiny/2 on 32x32x1 (d = 1024) and dit-tiny/4 on 64x64x1 (d = 4096); its zero-
initialised adaLN and output layers are filled with N(0, 0.02). Untrained, that DiT's denoiser is
close to the identity (every eigenvalue of J near 1: the worst case for Krylov methods, and not
what a trained denoiser looks like), so its output goes through a fixed shrinkage in the 2-D
cosine basis, gain 1 / (1 + (kx/5)^2 + (ky/7)^2), a Wiener-like filter: J then has the decaying,
distinct spectrum of a denoiser (Kadkhodaie et al.) at the cost of two small matmuls.

How it is measured, on shared cores: every case runs in the same process on the same model and
input; cases alternate inside each round (rotating order) and the figure is the median over
rounds. Rows are timed on a slice of R rows and scaled to d (every chunk of rows costs the same;
so does every iteration of the naive loop); the slice and the factor are in each note. Torch and
the BLAS under scipy's LAPACK run one thread each: two threads on cores shared with other jobs
mostly wait for each other (measured 4-30x slower for small products, and 2.3x slower for the
d = 4096 eigensolvers, erratic).

Peak memory, in a first untimed round (which also warms up): a thread samples this process's
RSS every millisecond while a case runs; the figure is the peak above the RSS at its start, after
`malloc_trim` has handed freed heap back to the OS (so an earlier case's freed buffers do not hide
a later case's growth). It misses spikes shorter than a millisecond, and for the row slices it
is the slice's memory: the graph and batch are the same at any d, the J rows held are R x d.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from benchmarks.common import Row, Timing, print_table, quick, write_results
from probe.config import ModelConfig
from probe.metrics.basis import subspace_agreement
from probe.models import zoo
from probe.models.attention import set_backend
from probe.models.denoiser import Denoiser
from probe.probes import jacobian as jac

SIGMA, K = 0.15, 64
MODELS = {1024: ("dit-tiny/2", 32), 4096: ("dit-tiny/4", 64)}


class PeakRSS:
    """`with PeakRSS() as peak:` ... `peak.bytes`: RSS growth over the block, sampled."""

    def __enter__(self) -> PeakRSS:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: baseline may include freed heap
            pass
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def bytes(self) -> int:
        return self.peak - self.start


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix [n, n] (rows are cosines of increasing frequency)."""
    k, x = torch.arange(n)[:, None].double(), torch.arange(n)[None].double()
    c = torch.cos(torch.pi * (x + 0.5) * k / n) * (2 / n) ** 0.5
    c[0] /= 2**0.5
    return c.float()


class Shrunk(torch.nn.Module):
    """A denoiser followed by a fixed shrinkage in the 2-D cosine basis (see the module doc)."""

    def __init__(self, denoiser: Denoiser, size: int):
        super().__init__()
        self.denoiser, self.c = denoiser, dct_matrix(size)
        k = torch.arange(size).float()
        self.gain = 1 / (1 + (k[None] / 5) ** 2 + (k[:, None] / 7) ** 2)

    def forward(self, x, sigma):
        out = self.c @ self.denoiser(x, sigma) @ self.c.T  # to cosine coefficients
        return self.c.T @ (self.gain * out) @ self.c


def bench_denoiser(arch: str, size: int) -> Shrunk:
    torch.manual_seed(0)
    backbone = zoo.build(ModelConfig(arch=arch, image_size=size, channels=1))
    with torch.no_grad():
        for p in backbone.parameters():
            if p.requires_grad and p.ndim > 1 and not p.any():
                p.normal_(0, 0.02)
    denoiser = Denoiser(backbone, "ddpm", 1, size).eval().requires_grad_(False)
    set_backend(denoiser, "explicit")
    return Shrunk(denoiser, size).eval()


def identity_rows(start: int, count: int, d: int) -> torch.Tensor:
    rows = torch.zeros(count, d)
    rows[torch.arange(count), start + torch.arange(count)] = 1
    return rows


def vmap_rows(f, y, rows: int, chunk: int) -> torch.Tensor:
    """torch.func.vjp of one forward, vmapped over chunks of identity rows."""
    lin = jac.Linearised(f, y)
    return torch.cat([lin.vjp(identity_rows(s, min(chunk, rows - s), lin.d))
                      for s in range(0, rows, chunk)])


def naive_rows(f, y, rows: int) -> torch.Tensor:
    """Per output pixel: a forward and a backward of that pixel alone."""
    out = []
    for i in range(rows):
        x = y.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(x)[i], x)
        out.append(grad)
    return torch.stack(out)


def floor_rows(denoiser, y, shape, rows: int, chunk: int) -> Callable[[], torch.Tensor]:
    """A batch of `chunk` copies of y, its forward done once, outside the timing; the timed part
    is one backward per `chunk` rows (each copy carries one identity row's cotangent). The graph
    is built once for all rounds, so its memory is warm. (The full method builds a fresh graph per
    call; with glibc's default trimming its backward passes ran ~1.2x slower than these, page-
    faulting freed buffers back in, hence probe.allocator.)"""
    x = y.reshape(1, *shape).repeat(chunk, 1, 1, 1).requires_grad_(True)
    out = denoiser(x, SIGMA)
    d = y.numel()

    def run():
        parts = []
        for s in range(0, rows, chunk):
            n = min(chunk, rows - s)
            cot = torch.zeros(chunk, d)
            cot[:n] = identity_rows(s, n, d)
            (grad,) = torch.autograd.grad(out, x, cot.reshape(chunk, *shape), retain_graph=True)
            parts.append(grad.reshape(chunk, d)[:n])
        return torch.cat(parts)

    return run


def interleaved(cases: dict[str, Callable[[], object]], rounds: int
                ) -> tuple[dict[str, Timing], dict[str, int], dict[str, object]]:
    """A first, untimed round measures each case's peak RSS (and warms up); then each case runs
    once per timed round, the order rotating. Returns median times, peaks, last results.

    The RSS sampler thread and its `malloc_trim` stay out of the timed rounds."""
    names = list(cases)
    peaks, results = {}, {}
    for name in names:
        with PeakRSS() as peak:
            results[name] = cases[name]()
        peaks[name] = peak.bytes
        print(f"  memory round {name}: {mib(peak.bytes)}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            results[name] = cases[name]()
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1}/{rounds} {name}: {times[name][-1]:.2f}s", flush=True)
    timings = {n: Timing(statistics.median(t), min(t), max(t), len(t)) for n, t in times.items()}
    return timings, peaks, results


def mib(n: int) -> str:
    return f"peak +{n / 2**20:.0f} MiB RSS"


def scaled(t: Timing, factor: float, extra: float = 0.0) -> Timing:
    return Timing(t.median_s * factor + extra, t.min_s * factor + extra,
                  t.max_s * factor + extra, t.repeats)


def jacobian_vs_peers(d: int, rounds: int, slice_rows: int, naive_slice: int) -> list[Row]:
    arch, size = MODELS[d]
    shape = (1, size, size)
    denoiser = bench_denoiser(arch, size)
    f = jac.flat_denoiser(denoiser, SIGMA, shape)
    y = torch.randn(d, generator=torch.Generator().manual_seed(1))
    chunk = jac.chunk_size(f, y)
    rows = min(slice_rows, d)
    cases = {
        "full": lambda: jac.full_jacobian(f, y, chunk, rows)[0],
        "vmap": lambda: vmap_rows(f, y, rows, chunk),
        "naive": lambda: naive_rows(f, y, naive_slice),
        "floor": floor_rows(denoiser, y, shape, rows, chunk),
    }
    print(f"d = {d}: {arch} on {size}x{size}x1, chunk {chunk}, full/floor on {rows} rows, "
          f"naive on {naive_slice}", flush=True)
    t, peaks, results = interleaved(cases, rounds)
    err = (results["full"][:naive_slice] - results["naive"]).abs().max().item()
    err_floor = (results["full"] - results["floor"]).abs().max().item()
    err_vmap = (results["full"] - results["vmap"]).abs().max().item()
    full = scaled(t["full"], d / rows)
    vmap = scaled(t["vmap"], d / rows)
    naive = scaled(t["naive"], d / naive_slice)
    floor = scaled(t["floor"], d / rows)
    tag = f"d={d} ({arch} {size}x{size})"
    return [
        Row(f"{tag} full J: 1 forward of {chunk} copies, backward {chunk} rows at a time",
            full.median_s, "s", full, f"{rows}/{d} rows timed, x{d / rows:g}; "
            f"{mib(peaks['full'])}"),
        Row(f"{tag} peer: torch.func.vmap over the vjp, chunk {chunk}", vmap.median_s, "s",
            vmap, f"{rows}/{d} rows timed, x{d / rows:g}; {mib(peaks['vmap'])}; "
            f"rows equal to {err_vmap:.1e}"),
        Row(f"{tag} peer: naive per-pixel fwd+bwd", naive.median_s, "s", naive,
            f"{naive_slice}/{d} rows timed, x{d / naive_slice:g}; {mib(peaks['naive'])}; "
            f"rows equal to {err:.1e}"),
        Row(f"{tag} floor: {d} backward rows at batch {chunk}", floor.median_s, "s", floor,
            f"{rows}/{d} rows timed, x{d / rows:g}; forward untimed; {mib(peaks['floor'])}; "
            f"rows equal to {err_floor:.1e}"),
        Row(f"{tag} naive / full (target >= 1.4)", naive.median_s / full.median_s, "x"),
        Row(f"{tag} full / floor (target <= 1.2)", full.median_s / floor.median_s, "x"),
        Row(f"{tag} vmap / full", vmap.median_s / full.median_s, "x"),
    ]


def lanczos_vs_full(d: int, k: int, rounds: int) -> list[Row]:
    arch, size = MODELS[d]
    f = jac.flat_denoiser(bench_denoiser(arch, size), SIGMA, (1, size, size))
    y = torch.randn(d, generator=torch.Generator().manual_seed(1))
    chunk = jac.chunk_size(f, y)
    products = {}

    def lanczos():
        basis = jac.decompose_lanczos(jac.Linearised(f, y), k)
        products["lanczos"] = basis.products
        return basis

    cases = {"lanczos": lanczos,
             "full": lambda: jac.decompose_full(f, y, k, chunk)}
    print(f"lanczos vs full at d = {d}, k = {k}", flush=True)
    t, peaks, results = interleaved(cases, rounds)
    full, lan = results["full"], results["lanczos"]
    ev_err = np.abs(lan.eigenvalues / full.eigenvalues[:k] - 1).max()
    sv_err = np.abs(lan.singular_values / full.singular_values[:k] - 1).max()
    agree = subspace_agreement(full.eigenvectors, lan.eigenvectors)
    tag = f"d={d} k={k}"
    return [
        Row(f"{tag} full: J + dense eigh/SVD", t["full"].median_s, "s", t["full"],
            mib(peaks["full"])),
        Row(f"{tag} lanczos: one Lanczos on (J+J^T)/2, Ritz SVD, {lan.probes} deflated probes",
            t["lanczos"].median_s, "s", t["lanczos"],
            f"{products['lanczos']} products; {mib(peaks['lanczos'])}"),
        Row(f"{tag} full / lanczos (target >= 10)", t["full"].median_s / t["lanczos"].median_s,
            "x"),
        Row(f"{tag} top-{k} eigenvalues, max relative error (target <= 1e-4)", ev_err, "rel"),
        Row(f"{tag} top-{k} singular values, max relative error", sv_err, "rel"),
        Row(f"{tag} eigenvector subspaces, mean cos of principal angles", agree, "cos"),
        Row(f"{tag} trace: full {full.trace:.2f}, Hutchinson {lan.trace:.2f}",
            abs(lan.trace / full.trace - 1), "rel"),
        Row(f"{tag} asymmetry: full {full.asymmetry:.4f}, Hutchinson {lan.asymmetry:.4f}",
            abs(lan.asymmetry / full.asymmetry - 1), "rel"),
    ]


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[Row] = []
    try:
        with threadpool_limits(1):
            if quick():
                rows += jacobian_vs_peers(1024, rounds=2, slice_rows=256, naive_slice=32)
                rows += lanczos_vs_full(1024, k=16, rounds=1)
            else:
                rows += jacobian_vs_peers(1024, rounds=3, slice_rows=1024, naive_slice=128)
                rows += jacobian_vs_peers(4096, rounds=3, slice_rows=1024, naive_slice=128)
                rows += lanczos_vs_full(4096, k=K, rounds=2)
    finally:
        torch.set_num_threads(threads)
    print_table("jacobian probe (one thread for torch and for BLAS)", rows)
    path = write_results("jacobian", rows, {"sigma": SIGMA, "k": K, "models": MODELS,
                                            "threads": 1})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
