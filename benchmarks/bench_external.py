"""Probing through `--model` against probing the same weights as a run: the overhead of the
outside-model wrapper (probe.models.native: an affine map onto [0, 1] in and out, and the
Jacobian probe's shift to the network's zero) on the same forward.

    python -m benchmarks external            # writes artifacts/benchmarks/external.json
    python -m benchmarks external --quick

One bias-free UNet (bf-unet-40 layout: 64 channels, 2 poolings) with fixed random weights is
probed twice in one process: as a run of this tool (`Denoiser(objective="blind")` on [-1, 1]) and
as a Kadkhodaie et al. `model.pt` (a DataParallel state dict, read by probe.external into a
`RangeDenoiser` on [0, 1]). The timed work is what `probe jacobian-basis` does per (image,
sigma): `analyse` on the full Jacobian (d = 1024, 32x32; --quick: d = 256) of the function the
probe builds, with
the origin the run's `native_range` gives. The two cases alternate inside each round and the
figure is the median per-case time over rounds; the ratio outside / run must stay <= 1.05.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Row, Timing, print_table, quick, write_results
from probe.external import load_model
from probe.models.denoiser import Denoiser
from probe.models.unet import BiasFreeUNet
from probe.probes.jacobian import analyse, flat_denoiser

LIMIT = 1.05


def cases(folder: Path):
    torch.manual_seed(0)
    net = BiasFreeUNet(1, 64, 2).eval().requires_grad_(False)
    run = Denoiser(net, "blind", 1).eval()
    path = folder / "model.pt"
    torch.save(torch.nn.DataParallel(net).state_dict(), path)
    outside = load_model(str(path))
    return {"run": (run, 0.0), "--model": (outside.denoiser, -1.0)}


def main() -> None:
    torch.set_num_threads(1)
    rounds, side = (3, 16) if quick() else (7, 32)
    y = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        models = cases(Path(tmp))
        times = {name: [] for name in models}
        for r in range(rounds + 1):  # round 0 warms up
            order = list(models) if r % 2 else list(models)[::-1]
            for name in order:
                denoiser, origin = models[name]
                f = flat_denoiser(denoiser, 0.2, (1, side, side), origin)
                start = time.perf_counter()
                analyse(f, y.reshape(-1) - origin, 8, "full")
                if r:
                    times[name].append(time.perf_counter() - start)
    med = {n: statistics.median(t) for n, t in times.items()}
    rows = [Row(f"jacobian full d={side * side} ({n})", med[n], "s",
                Timing(med[n], min(t), max(t), len(t))) for n, t in times.items()]
    ratio = med["--model"] / med["run"]
    rows.append(Row("--model / run", ratio, "x", note=f"limit {LIMIT}"))
    print_table("Outside model wrapper overhead (same weights, same forward)", rows)
    print(f"results: {write_results('external', rows, {'rounds': rounds, 'd': side * side})}")
    if ratio > LIMIT:
        raise SystemExit(f"--model costs {ratio:.3f}x the run (limit {LIMIT})")


if __name__ == "__main__":
    main()
