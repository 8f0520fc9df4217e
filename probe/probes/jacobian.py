"""Denoiser Jacobians J = dD(y, sigma)/dy at y = x + sigma z, and their eigen- and singular bases.

Kadkhodaie et al. (2310.02557): near a noisy image the denoiser acts as D(y) ~ J(y) y, so the
eigenvectors of J are the basis it adapts to the image and its eigenvalues the shrinkage applied
along each. For every probe image (a fixed, seeded data-set row) and sigma (fixed, seeded z) this
module stores the top-k eigenpairs of the symmetric part (J + J^T)/2, the singular values and
top-k singular vectors of J, and three scalars (attrs of the group):

    asymmetry = ||J - J^T||_F / ||J||_F     (0 where D is locally a gradient field, as the ideal
                                             denoiser y + sigma^2 grad log p(y) is)
    trace     = tr J                        (effective dimensionality of the local subspace)
    linearity = ||D(y) - J y|| / ||D(y)||   (0 for a locally linear, bias-free denoiser)

Linearity is measured about the network's own zero: a network trained on [0, 1] data is bias-
free there, f(y) = J y with y in [0, 1], which is the point -1 on the probe's [-1, 1] scale
(probe.models.native). With o that point (`run.native_range`, default [-1, 1]: o = 0), the
probe linearises g(u) = D(u + o) - o at u = y - o; g has the same Jacobian, trace and bases as D
and equals f / a, so the stored linearity is ||f(y) - J y|| / ||f(y)|| on the network's scale.
The sigma of every (image, sigma) is on the probe's [-1, 1] scale, as everywhere: a [0, 1]
network sees noise of std sigma / 2 (a blind one is not told it; 255 sigma / 2 on 0..255).

Two ways to get there:

- `full`: the whole d x d J, as rows e_i^T J: one forward on a batch of `chunk` copies of y whose
  graph is kept, then d / chunk backward passes, each sending `chunk` identity rows as the copies'
  cotangents (chunk from free memory and the thread count, psutil). That is the floor of "d
  backward passes at the chosen batch"; `torch.func.vmap` over the vjp of one forward computes
  the same rows but measured from as fast to 1.35x slower on CPU (its batching rules copy the
  shared saved tensors: softmax backward, matmuls). Then dense symmetric eigensolvers: exact
  trace and asymmetry, every eigenvalue and singular value stored (vectors: the top k).
- `lanczos`: matrix-free, from one forward whose graph is kept (`Linearised`): products J^T u
  (`torch.func.vjp`) and J v (the vjp of the vjp: u -> J^T u is linear, so its own vjp is
  v -> J v; it reuses the kept graph where `torch.func.jvp` would redo the forward, and measured
  faster on CPU). One Lanczos process on (J + J^T)/2 keeps every product and serves the eigen-
  pairs (with exact residuals), the singular triplets and deflated Hutchinson estimates of trace
  and asymmetry: probe.probes.lanczos. Only the top k eigen/singular values exist.
- `auto`: `full` while the matrix and its decompositions fit in memory and d <= AUTO_FULL_ROWS_PER_K
  x k, else `lanczos` (see benchmarks/bench_jacobian.py for where the two cross).

Attention runs on the explicit-softmax path (`set_backend(model, "explicit")`): the fused CPU SDPA
kernels have no forward-mode AD and vmap through them is slow. Output: probes/<run-id>/jacobian.h5
(layout: probe.formats.jacobian) with one complete group per (image, sigma), written through
`ResumableH5`, so a killed probe resumes at the next (image, sigma).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import scipy.linalg
import torch

from probe import artifacts
from probe.allocator import keep_freed_memory
from probe.config import JACOBIAN_METHODS, JacobianConfig, to_dict
from probe.errors import ProbeError
from probe.formats.h5 import ResumableH5, up_to_date
from probe.formats.jacobian import group_key, write_group
from probe.metrics.basis import basis_table
from probe.models.attention import set_backend
from probe.probes import lanczos
from probe.probes.common import check_inputs, probe_indices
from probe.seeding import fixed_noise

_DEFAULT = JacobianConfig()
# Dense path: J (float32) plus float64 J, J - J^T, (J + J^T)/2, J^T J and LAPACK's copies and
# workspace, in bytes per entry of the d x d matrix.
FULL_BYTES_PER_ENTRY = 64
MEMORY_FRACTION = 0.5  # share of the free memory a probe lets itself use
ROWS_PER_THREAD = 8  # Jacobian rows per backward per intra-op thread: on one CPU core batches
# of 4..16 rows cost the same per row and 32 cost 1.4x more (cache); more threads need more rows
BACKWARD_OVERHEAD = 3  # a batched row holds its forward's saves plus ~2 copies in the backward
# auto: full while d <= this x k. Lanczos spends about 2.7 k steps of 2 products (J v costs
# ~1.35 rows, J^T u ~1.1), k more for the singular vectors and 2 per Hutchinson probe: about
# 9 k rows (d = 4096, k = 64: 172 steps). Full costs d rows plus dense eigensolvers but gives the
# exact spectrum, so it is kept up to about twice the cost.
AUTO_FULL_ROWS_PER_K = 16
LANCZOS_STEPS_PER_K = 8  # lanczos gives up after this x k + 128 steps


# ------------------------------------------------------------------------------ linearisation


def flat_denoiser(denoiser: Callable, sigma: float, shape: tuple[int, ...],
                  origin: float = 0.0) -> Callable:
    """u [d] -> D(u + o, sigma) - o [d] for images of `shape` [C, H, W] (o = `origin`, the
    network's zero: module doc); also row-wise on [B, d]."""

    def f(v: torch.Tensor) -> torch.Tensor:
        if origin:
            return denoiser(v.reshape(-1, *shape) + origin, sigma).reshape(v.shape) - origin
        return denoiser(v.reshape(-1, *shape), sigma).reshape(v.shape)

    return f


def native_origin(run) -> float:
    """The network's zero on the probe's scale (0 for [-1, 1] networks, -1 for [0, 1] ones)."""
    lo, hi = getattr(run, "native_range", (-1.0, 1.0))
    return float(-(hi + lo) / (hi - lo))


class Linearised:
    """f at one point y: its value and the products J^T u and J v, all from one forward pass."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor):
        self.f, self.y = f, y.detach()
        self.value, self._vjp = torch.func.vjp(f, self.y)
        self.value = self.value.detach()
        # The vjp is linear in its cotangent u, so the vjp of u -> J^T u, applied to v, is J v.
        _, self._jvp = torch.func.vjp(lambda u: self._vjp(u)[0], torch.zeros_like(self.value))
        self.d = self.y.numel()
        self.calls = {"vjp": 0, "jvp": 0}

    @property
    def dtype(self) -> torch.dtype:
        return self.y.dtype

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """u [d] -> J^T u; u [B, d] -> [B, d] (rows u_b^T J)."""
        self.calls["vjp"] += 1 if u.ndim == 1 else u.shape[0]
        fn = self._vjp if u.ndim == 1 else torch.func.vmap(self._vjp)
        return fn(u)[0].detach()

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """v [d] -> J v; v [B, d] -> [B, d] (rows (J v_b)^T)."""
        self.calls["jvp"] += 1 if v.ndim == 1 else v.shape[0]
        fn = self._jvp if v.ndim == 1 else torch.func.vmap(self._jvp)
        return fn(v)[0].detach()


def available_memory() -> int:
    """Bytes the OS can give now (psutil's `available`: free plus reclaimable cache)."""
    return int(psutil.virtual_memory().available)


def saved_bytes(f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> int:
    """Bytes one plain-autograd forward of f keeps for its backward (torch.func refuses saved-
    tensor hooks, so this is a separate forward; it does not depend on y's value)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(y.detach().clone().requires_grad_(True))
    return total


def chunk_size(f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
               available: int | None = None) -> int:
    """Rows per vmapped product: ROWS_PER_THREAD per torch thread, fewer if MEMORY_FRACTION of
    the free memory cannot hold them (each vmapped row of a backward holds about
    BACKWARD_OVERHEAD copies of what one forward saves)."""
    available = available_memory() if available is None else available
    per_row = max(saved_bytes(f, y), 1) * BACKWARD_OVERHEAD
    most = ROWS_PER_THREAD * torch.get_num_threads()
    return int(max(1, min(most, y.numel(), MEMORY_FRACTION * available // per_row)))


def full_jacobian(f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                  chunk: int | None = None, rows: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [d, d], f(y)): rows e_i^T J, `chunk` per backward pass, all from ONE forward
    (`rows`: only the first rows, [rows, d]; the benchmark times slices).

    The forward runs once on `chunk` copies of y (f must treat the rows of a batch
    independently, as an eval-mode denoiser does) and its graph is kept; each backward sends
    identity rows e_s .. e_{s+chunk-1} as the copies' cotangents. That is exactly "d backward
    passes at the chosen batch", the floor. (`torch.func.vmap` over the vjp of a single forward
    computes the same rows, but its batching rules copy the unbatched saved tensors (softmax,
    matmul) for every chunk: measured up to 1.35x slower on CPU, benchmarks/bench_jacobian.py.)
    """
    keep_freed_memory()  # the row passes reuse their buffers instead of page-faulting new ones
    d = y.numel()
    rows = d if rows is None else min(rows, d)
    chunk = min(chunk or chunk_size(f, y), rows)
    x = y.detach().reshape(1, d).repeat(chunk, 1).requires_grad_(True)
    with torch.enable_grad():
        out = f(x)
    jac = torch.empty(rows, d, dtype=y.dtype)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        cotangents = torch.zeros(chunk, d, dtype=y.dtype)
        cotangents[torch.arange(n), start + torch.arange(n)] = 1
        (grads,) = torch.autograd.grad(out, x, cotangents, retain_graph=start + chunk < rows)
        jac[start:start + n] = grads[:n]
    return jac, out[0].detach()


# ------------------------------------------------------------------------- method and checks


def full_bytes(d: int) -> int:
    return FULL_BYTES_PER_ENTRY * d * d


def check_k(k: int, d: int) -> None:
    if not 1 <= k < d:
        raise ProbeError(f"--k {k} must lie in 1..{d - 1}: the Jacobian is {d} x {d} "
                         f"(channels x height x width)")


def check_full_fits(d: int, available: int | None = None) -> None:
    available = available_memory() if available is None else available
    need = full_bytes(d)
    if need > MEMORY_FRACTION * available:
        raise ProbeError(
            f"--method full at d = {d} needs about {need / 2**30:.1f} GiB for the {d} x {d} "
            f"Jacobian and its decompositions, but only {available / 2**30:.1f} GiB is free "
            f"(half of it may be used); use --method lanczos (matrix-free top-k)")


def resolve_method(method: str, d: int, k: int, available: int | None = None) -> str:
    """Validate k and the method for a d-dimensional image; `auto` -> full or lanczos."""
    if method not in JACOBIAN_METHODS:
        raise ProbeError(f"--method must be one of {', '.join(JACOBIAN_METHODS)}, got {method!r}")
    check_k(k, d)
    if method == "full":
        check_full_fits(d, available)
        return "full"
    if method == "lanczos":
        return "lanczos"
    available = available_memory() if available is None else available
    fits = full_bytes(d) <= MEMORY_FRACTION * available
    return "full" if fits and d <= AUTO_FULL_ROWS_PER_K * k else "lanczos"


# ----------------------------------------------------------------------------- decompositions


@dataclass
class Basis:
    """What one (image, sigma) leaves on disk. Vectors are columns [d, k], values descending."""

    method: str
    eigenvalues: np.ndarray  # of (J + J^T) / 2: all d (full) or the top k (lanczos)
    eigenvectors: np.ndarray  # [d, k]
    singular_values: np.ndarray  # all d (full) or the top k (lanczos)
    left_singular_vectors: np.ndarray  # [d, k]: J v_i = s_i u_i
    right_singular_vectors: np.ndarray  # [d, k]
    trace: float
    asymmetry: float
    linearity: float
    denoised: np.ndarray  # D(y), flat
    estimator: str  # exact | hutchinson (how trace and asymmetry were obtained)
    probes: int = 0  # Hutchinson probe vectors
    products: int = 0  # Jacobian-vector products spent


def _sign_fix(vectors: np.ndarray, partner: np.ndarray | None = None):
    """Flip each column so its largest-magnitude entry is positive (figures stay comparable);
    `partner` columns (the other singular vectors) flip with them."""
    idx = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return (vectors * signs, None if partner is None else partner * signs)


def _linearity(value: np.ndarray, jy: np.ndarray) -> float:
    return float(np.linalg.norm(value - jy) / max(np.linalg.norm(value), 1e-300))


def _top_eigh(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvalues (descending) and the top-k eigenvectors of a symmetric matrix.

    Two LAPACK calls (all values; k vectors by MRRR) cost less than one `eigh` with every
    vector: 2.2 s against 3.3 s at d = 2048 on one core."""
    d = len(matrix)
    values = scipy.linalg.eigh(matrix, eigvals_only=True, driver="evd", check_finite=False)
    _, vectors = scipy.linalg.eigh(matrix, subset_by_index=[d - k, d - 1], driver="evr",
                                   check_finite=False)
    return values[::-1].copy(), vectors[:, ::-1].copy()


def decompose_full(f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, k: int,
                   chunk: int | None = None) -> Basis:
    """Dense decompositions of the whole J. Singular values and right singular vectors come
    from the Gram matrix J^T J (s_i^2, v_i), left ones as u_i = J v_i / s_i: ~3x cheaper than a
    full SVD; the top values stay exact to rounding, the smallest ones are good to about
    1e-8 s_max (the square root of float64's precision), which the stored spectrum can afford."""
    jac, value = full_jacobian(f, y, chunk)
    jac, value, y = jac.double().numpy(), value.double().numpy(), y.detach().double().numpy()
    d = len(y)
    norm = np.linalg.norm(jac)
    asymmetry = float(np.linalg.norm(jac - jac.T) / max(norm, 1e-300))
    trace, jy = float(np.trace(jac)), jac @ y
    evals, evecs = _top_eigh((jac + jac.T) / 2, k)
    gram, right = _top_eigh(jac.T @ jac, k)
    svals = np.sqrt(np.clip(gram, 0, None))
    left = (jac @ right) / np.where(svals[:k] > 0, svals[:k], 1)
    left, right = _sign_fix(left, right)
    return Basis("full", evals, _sign_fix(evecs)[0], svals, left, right, trace, asymmetry,
                 _linearity(value, jy), value, "exact", 0, d)


def _products(lin: Linearised) -> tuple[lanczos.Product, lanczos.Product]:
    """J v and J^T u of the linearised denoiser on float64 numpy vectors."""

    def to_torch(x):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(lin.dtype)

    def jv(x):
        return lin.jvp(to_torch(x)).double().numpy()

    def jtv(x):
        return lin.vjp(to_torch(x)).double().numpy()

    return jv, jtv


def decompose_lanczos(lin: Linearised, k: int, tol: float = _DEFAULT.tol,
                      probes: int = _DEFAULT.probes, seed: int = _DEFAULT.seed,
                      max_steps: int | None = None) -> Basis:
    """Top-k eigenpairs of (J + J^T)/2 and singular triplets of J, matrix-free (see
    probe.probes.lanczos): one Lanczos process whose products serve all three results."""
    keep_freed_memory()
    jv, jtv = _products(lin)
    rng = np.random.default_rng([seed, 0])
    max_steps = max_steps or LANCZOS_STEPS_PER_K * k + 128
    try:
        basis = lanczos.symmetric_lanczos(jv, jtv, lin.d, k, tol, rng, max_steps)
    except lanczos.NoConvergence:
        raise ProbeError(f"lanczos did not converge for k = {k} at tol {tol:g} in "
                         f"{min(max_steps, lin.d)} steps; raise --tol or lower --k, or use "
                         "--method full") from None
    eigen = lanczos.ritz_eigen(basis, k)
    svd = lanczos.ritz_singular(basis, k, jtv)
    left, right = _sign_fix(svd.left, svd.right)
    traces = lanczos.deflated_hutchinson(basis, jv, jtv, probes, np.random.default_rng([seed, 1]))
    value = lin.value.double().numpy()
    jy = jv(lin.y.double().numpy())
    asymmetry = float(np.sqrt(traces.asymmetry2 / max(traces.frobenius2, 1e-300)))
    return Basis("lanczos", eigen.values, _sign_fix(eigen.vectors)[0], svd.values, left, right,
                 traces.trace, asymmetry, _linearity(value, jy), value, "hutchinson", probes,
                 lin.calls["vjp"] + lin.calls["jvp"])


def analyse(f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, k: int,
            method: str = _DEFAULT.method, tol: float = _DEFAULT.tol,
            probes: int = _DEFAULT.probes, seed: int = _DEFAULT.seed,
            chunk: int | None = None) -> Basis:
    """Everything stored for one Jacobian of f (flat in, flat out) at the flat point y."""
    method = resolve_method(method, y.numel(), k)
    if method == "full":
        return decompose_full(f, y, k, chunk)
    return decompose_lanczos(Linearised(f, y), k, tol, probes, seed)


# --------------------------------------------------------------------------------- the probe


def plan_run(run, cfg: JacobianConfig) -> dict:
    """What probing `run` will do (validated): d, the resolved method, the probe images."""
    d = math.prod(run.image_shape)
    return {"run": run.run_id, "d": d, "method": resolve_method(cfg.method, d, cfg.k),
            "images": probe_indices(run, cfg.images, cfg.source, cfg.seed).tolist()}


def probe_run(run, p: dict, cfg: JacobianConfig, path: Path, command: str = "",
              log: Callable[[str], None] = lambda msg: None) -> Path:
    """Write the jacobian.h5 of one loaded run at `path` (resuming a killed probe)."""
    method, rows = p["method"], np.asarray(p["images"], np.int64)
    identity = {"config": to_dict(dataclasses.replace(cfg, method=method)), "images": p["images"],
                "checkpoint_sha256": run.checkpoint_sha256}
    if up_to_date(path, identity):
        log(f"{run.run_id}: {path.name} is up to date")
        return path
    attrs = {**run.provenance(), "command": command, "config": to_dict(cfg), "method": method,
             "images": p["images"]}
    denoiser, origin = run.denoiser, native_origin(run)
    previous = set_backend(denoiser, "explicit")
    clean = run.images(rows)
    try:
        with ResumableH5(path, attrs, identity) as out:
            for row, x0 in zip(rows, clean):
                for si, sigma in enumerate(cfg.sigmas):
                    key = group_key(row, sigma)
                    if out.done(key):
                        continue
                    start = time.perf_counter()
                    noisy = x0 + sigma * fixed_noise(tuple(x0.shape), cfg.seed, row, si)
                    f = flat_denoiser(denoiser, sigma, tuple(x0.shape), origin)
                    basis = analyse(f, noisy.reshape(-1) - origin, cfg.k, method, cfg.tol,
                                    cfg.probes, cfg.seed)
                    if origin:
                        basis = dataclasses.replace(basis, denoised=basis.denoised + origin)
                    seconds = time.perf_counter() - start
                    group = out.begin(key)
                    write_group(group, basis, x0.numpy(), noisy.numpy(),
                                {"image": int(row), "sigma": float(sigma), "sigma_index": si,
                                 "seconds": seconds})
                    out.complete(group)
                    log(f"{run.run_id}: image {row} sigma {sigma:g}: {method}, "
                        f"trace {basis.trace:.2f}, asymmetry {basis.asymmetry:.3f}, "
                        f"{seconds:.1f} s")
    finally:
        set_backend(denoiser, previous)
    return path


def validate(cfg: JacobianConfig) -> None:
    check_inputs(cfg.sigmas, cfg.source, cfg.seed)
    if cfg.method not in JACOBIAN_METHODS:
        raise ProbeError(f"--method must be one of {', '.join(JACOBIAN_METHODS)}")
    if cfg.images < 1 or cfg.k < 1 or cfg.probes < 1 or not cfg.tol >= 0:
        raise ProbeError("--images, --k and --probes must be positive and --tol >= 0")


class JacobianBasis:
    """The jacobian-basis probe (protocol: probe.probes.protocol)."""

    name = "jacobian-basis"
    filename = artifacts.JACOBIAN_H5
    table = artifacts.BASIS_TABLE

    def validate(self, cfg: JacobianConfig) -> None:
        validate(cfg)

    def training_images(self, cfg: JacobianConfig) -> str:
        return "Jacobians at training images (--from train)" if cfg.source == "train" else ""

    def plan(self, runs, cfg: JacobianConfig, paths, log) -> list[dict]:
        return [plan_run(run, cfg) for run in runs]

    def probe(self, run, plan: dict, cfg: JacobianConfig, path: Path, command: str,
              log) -> None:
        probe_run(run, plan, cfg, path, command, log)

    def tidy(self, runs, paths: list[Path], cfg: JacobianConfig) -> pd.DataFrame:
        return basis_table(runs, paths)


PROBE = JacobianBasis()
