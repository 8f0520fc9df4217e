"""Receptive-field maps per second: captum Saliency against rows of the full Jacobian.

One image, one noise level, a random DiT (adaLN-Zero weights perturbed so the output depends on
the input). Two ways to get the maps of P output pixels:

- saliency: `probe.probes.attribution.receptive_field_maps` (captum Saliency on the pixel-output
  wrapper; the image repeated once per pixel, one batched forward + backward);
- jacobian: the full d x d Jacobian from the Jacobian probe (`probe.probes.jacobian.full_jacobian`,
  vmapped vjps of identity rows, explicit-softmax attention), then the P rows read out. Its cost
  does not depend on P, so per map it wins once P approaches d.

The two must agree (max |difference| is reported and checked). Cases run interleaved, round by
round, on the same model and image, and the figures are medians, so contention on a shared CPU
hits both alike; `saliency/jacobian` is the speed ratio at P = 9 (the `--pixels grid` case).

Model: DiT-S/2 (depth 12, width 384, 6 heads) at 16x16 pixels (64 tokens, d = 256) by default,
because a 32x32 full Jacobian (1024 vjps of DiT-S/2) takes minutes per repeat on a shared CPU;
`--quick` uses DiT-tiny/2 (depth 4, width 128, 4 heads) at 16x16.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from benchmarks.common import Row, Timing, print_table, quick, write_results

SIGMA = 0.5


def _model(depth: int, width: int, heads: int, image: int, patch: int):
    from probe.models.denoiser import Denoiser
    from probe.models.dit import DiT

    torch.manual_seed(0)
    backbone = DiT(image_size=image, in_channels=1, patch=patch, width=width, depth=depth,
                   heads=heads)
    with torch.no_grad():  # adaLN-Zero: a fresh DiT is constant; give every zero a value
        for p in backbone.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.02)
    return Denoiser(backbone, "edm", 1, image).eval().requires_grad_(False)


def _full_jacobian(denoiser, y: torch.Tensor) -> torch.Tensor:
    """d x d Jacobian of y -> D(y, SIGMA): the Jacobian probe's, or vmap(vjp) of identity rows."""
    from probe.models.attention import set_backend

    previous = set_backend(denoiser, "explicit")  # the path torch.func transforms
    try:
        try:
            from probe.probes.jacobian import Linearised, flat_denoiser, full_jacobian
        except ImportError:
            f = lambda v: denoiser(v.reshape(1, *y.shape), SIGMA).reshape(-1)  # noqa: E731
            _, vjp = torch.func.vjp(f, y.reshape(-1))
            eye = torch.eye(y.numel())
            return torch.cat([torch.func.vmap(vjp)(eye[i:i + 64])[0]
                              for i in range(0, len(eye), 64)])
        return full_jacobian(Linearised(flat_denoiser(denoiser, SIGMA, tuple(y.shape)),
                                        y.reshape(-1)))
    finally:
        set_backend(denoiser, previous)


def _timing(times: list[float]) -> Timing:
    return Timing(statistics.median(times), min(times), max(times), len(times))


def main() -> list[Row]:
    from probe.probes.attribution import parse_pixels, receptive_field_maps

    small = quick()
    depth, width, heads = (4, 128, 4) if small else (12, 384, 6)
    image, patch, repeats = 16, 2, (3 if small else 5)
    name = f"DiT-{'tiny' if small else 'S'}/2 at {image}x{image}"
    denoiser = _model(depth, width, heads, image, patch)
    y = torch.randn(1, image, image, generator=torch.Generator().manual_seed(0))
    d = y.numel()
    pixel_sets = {"center": parse_pixels(["center"], image, image),
                  "grid": parse_pixels(["grid"], image, image)}

    def saliency(pixels):
        return receptive_field_maps(denoiser, y, SIGMA, pixels, "saliency", batch=len(pixels))

    # Agreement first (also the warm-up): saliency maps are the Jacobian's rows.
    jac = _full_jacobian(denoiser, y).numpy()
    grid = pixel_sets["grid"]
    maps = saliency(grid)[:, 0, 0].reshape(len(grid), d)
    rows = jac[[py * image + px for py, px in grid]]
    error = float(np.abs(maps - rows).max())
    scale = float(np.abs(rows).max())
    assert error <= 1e-4 * scale, f"saliency and Jacobian rows disagree: {error:g} vs {scale:g}"

    times: dict[str, list[float]] = {"center": [], "grid": [], "jacobian": []}
    for _ in range(repeats):  # interleaved rounds
        for key, pixels in pixel_sets.items():
            start = time.perf_counter()
            saliency(pixels)
            times[key].append(time.perf_counter() - start)
        start = time.perf_counter()
        _full_jacobian(denoiser, y)
        times["jacobian"].append(time.perf_counter() - start)

    t = {k: _timing(v) for k, v in times.items()}
    p_grid = len(grid)
    out = [
        Row("saliency, 1 pixel (center)", 1 / t["center"].median_s, "maps/s", t["center"]),
        Row(f"saliency, {p_grid} pixels (grid)", p_grid / t["grid"].median_s, "maps/s",
            t["grid"]),
        Row(f"full Jacobian, {p_grid} rows read", p_grid / t["jacobian"].median_s, "maps/s",
            t["jacobian"], f"{d} rows computed"),
        Row("full Jacobian, all rows", d / t["jacobian"].median_s, "maps/s", t["jacobian"]),
        Row(f"saliency/jacobian at {p_grid} pixels",
            t["jacobian"].median_s / t["grid"].median_s, "x", None,
            f"equal cost near {t['jacobian'].median_s * p_grid / t['grid'].median_s:.0f} "
            f"of {d} pixels"),
        Row("max |saliency - jacobian row|", error, "abs", None, f"max |entry| {scale:.3g}"),
    ]
    print_table(f"Receptive-field maps, {name} (d = {d}), sigma {SIGMA}, CPU threads "
                f"{torch.get_num_threads()}", out)
    write_results("attribution", out, {"model": name, "d": d, "sigma": SIGMA,
                                       "repeats": repeats})
    return out


if __name__ == "__main__":
    main()
