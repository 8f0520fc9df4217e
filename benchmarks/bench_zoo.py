"""Step time and MACs of every family's CPU presets side by side (issue: U-DiT and DiffiT).

One process, one batch of 32x32x1 images; each case is a full training step (DDPM loss,
backward, AdamW). Cases are timed in interleaved rounds so a busy machine slows all alike; the
table reports each preset's median step time, its MACs per image (torch's FLOP counter on the
attention path training runs: U-DiT's over-parameterised forward, DiffiT's partitions) and its
step time relative to the DiT of similar MACs.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import Row, print_table, quick, write_results
from probe.config import ModelConfig
from probe.diffusion.losses import training_loss
from probe.models import zoo
from probe.models.denoiser import Denoiser

PRESETS = ("dit-tiny/2", "udit-xs", "diffit-xs", "diffit-latent-xs", "unet-xs", "dit-tiny/1")
REFERENCE = "dit-tiny/2"  # the DiT whose MACs the tiny presets are closest to


def _step_fn(arch: str, batch: int, size: int):
    cfg = ModelConfig(arch=arch, image_size=size, channels=1)
    torch.manual_seed(0)
    denoiser = Denoiser(zoo.build(cfg), "ddpm", 1, size)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 1, size, size) * 2 - 1

    def step():
        loss = training_loss(denoiser, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return cfg, denoiser, step


def main() -> None:
    batch, size, rounds = (8, 32, 2) if quick() else (32, 32, 5)
    cases = {}
    for arch in PRESETS:
        cfg, denoiser, step = _step_fn(arch, batch, size)
        step()  # warm-up
        cases[arch] = (step, zoo.macs_per_image(denoiser.backbone, cfg),
                       zoo.count_parameters(denoiser.backbone))
    times = {arch: [] for arch in PRESETS}
    for _ in range(rounds):
        for arch, (step, _, _) in cases.items():
            start = time.perf_counter()
            step()
            times[arch].append(time.perf_counter() - start)
    reference = statistics.median(times[REFERENCE])
    rows = []
    for arch, (_, macs, params) in cases.items():
        median = statistics.median(times[arch])
        rows.append(Row(f"{arch} step", median * 1e3, "ms",
                        note=f"{macs / 1e6:.0f}M MACs/img, {params / 1e6:.2f}M params, "
                             f"{median / reference:.2f}x {REFERENCE}, "
                             f"{batch * 3 * 2 * macs / median / 1e9:.1f} GFLOP/s"))
    print_table(f"training step, batch {batch}, {size}x{size}x1 (median of {rounds})", rows)
    write_results("zoo", rows, {"batch": batch, "size": size, "rounds": rounds})


if __name__ == "__main__":
    main()
