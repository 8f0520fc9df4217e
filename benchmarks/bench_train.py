"""Training speed of our DiT, each figure against a peer timed in the same process:

1. throughput (images/s) of a training step vs diffusers' `DiTTransformer2DModel` at the same
   depth, width, heads, patch, classes and batch (AdamW on both), as a ratio (target >= 1);
2. model FLOP utilisation: FLOPs of a training step (forward + backward, counted by torch's
   FlopCounterMode) per second, over the fp32 matmul peak measured here with a large torch.mm
   (target >= 50 %);
3. local windows vs global attention at 1024 tokens (DiT-tiny/1 on 32x32, every layer windowed),
   with masked SDPA as the peer of our block-sparse path (target: windowed time <= global).

Runs alternate round by round (A, B, A, B, ...) and ratios are medians of the per-round ratios,
so a machine shared with other work slows both sides alike.

    python -m benchmarks train          # writes artifacts/benchmarks/train.json
    OMP_NUM_THREADS=1 python -m benchmarks train   # on a busy shared machine (see below)

Threads: on a machine whose cores other jobs also use, torch's default (one thread per core)
spends most of a step waiting at OpenMP barriers for a descheduled thread (measured here, 2
shared cores: tiny-model steps 7-25x slower than one thread); one thread gives stable figures.
The thread count is recorded with the results.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Row, Timing, print_table, quick, write_results
from probe.models.attention import set_backend
from probe.models.dit import DiT

CLASSES = 1000


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, per_round: int = 1,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin: one list entry per round."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[name].append((time.perf_counter() - start) / per_round)
    return times


def timing(seconds: list[float]) -> Timing:
    return Timing(statistics.median(seconds), min(seconds), max(seconds), len(seconds))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios: robust to the load drifting between rounds."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def training_step(model: nn.Module, forward: Callable[[], torch.Tensor], target: torch.Tensor
                  ) -> Callable[[], None]:
    """One AdamW step on the MSE to a fixed noise target, as epsilon-prediction trains. (Not the
    output's own square: a fresh adaLN-Zero DiT outputs 0, so that loss has zero gradients.)"""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = (forward().float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inputs(batch: int, channels: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    return x, t, y, torch.randn(x.shape, generator=g)


def ours(size: int, channels: int, depth: int, width: int, heads: int, patch: int,
         windows=None, classes: int = CLASSES) -> DiT:
    torch.manual_seed(0)
    return DiT(image_size=size, in_channels=channels, patch=patch, width=width, depth=depth,
               heads=heads, num_classes=classes, windows=windows)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- 1. diffusers


def vs_diffusers(cfg: dict, batch: int, rounds: int) -> list[Row]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    theirs = DiTTransformer2DModel(
        num_attention_heads=cfg["heads"], attention_head_dim=cfg["width"] // cfg["heads"],
        in_channels=cfg["channels"], out_channels=cfg["channels"], num_layers=cfg["depth"],
        sample_size=cfg["size"], patch_size=cfg["patch"], num_embeds_ada_norm=CLASSES)
    mine = ours(**cfg)
    x, t, y, target = inputs(batch, cfg["channels"], cfg["size"])
    steps = {
        "ours": training_step(mine, lambda: mine(x, t.float(), y), target),
        "diffusers": training_step(
            theirs, lambda: theirs(hidden_states=x, timestep=t, class_labels=y).sample, target),
    }
    times = interleaved(steps, rounds)
    ratio = paired_ratio(times["diffusers"], times["ours"])  # their time / ours = our speed-up
    shape = (f"depth {cfg['depth']}, width {cfg['width']}, heads {cfg['heads']}, "
             f"patch {cfg['patch']}, {cfg['size']}x{cfg['size']}x{cfg['channels']}, "
             f"batch {batch}")
    return [
        Row("ours: DiT training step", batch / statistics.median(times["ours"]), "images/s",
            timing(times["ours"]), f"{count(mine) / 1e6:.1f}M params; {shape}"),
        Row("diffusers: DiTTransformer2DModel step",
            batch / statistics.median(times["diffusers"]), "images/s",
            timing(times["diffusers"]),
            f"{count(theirs) / 1e6:.1f}M params (its blocks embed t and y each)"),
        Row("throughput ours / diffusers", ratio, "x", None, "target >= 1.0"),
    ]


# ------------------------------------------------------------------------------------- 2. MFU


def step_flops(model: DiT, x, t, y) -> int:
    """FLOPs of forward + backward, counted on the explicit-attention path: CPU fused SDPA has no
    FLOP formula in torch's counter, and explicit attention does the same matmuls as dense SDPA."""
    from torch.utils.flop_counter import FlopCounterMode

    previous = set_backend(model, "explicit")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t, y).square().mean().backward()
    set_backend(model, previous)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(n: int) -> Callable[[], None]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def mfu(cfg: dict, batch: int, rounds: int, mm_size: int) -> list[Row]:
    model = ours(**cfg)
    x, t, y, target = inputs(batch, cfg["channels"], cfg["size"])
    t = t.float()
    flops = step_flops(model, x, t, y)
    step = training_step(model, lambda: model(x, t, y), target)
    times = interleaved({"step": step, "mm": matmul_peak(mm_size)}, rounds,
                        per_round=1)
    # The mm peak is the best sustained rate seen (the machine is shared): min time.
    mm_flops = 2 * mm_size**3
    peak = mm_flops / min(times["mm"])
    achieved = flops / statistics.median(times["step"])
    best = flops / min(times["step"])
    return [
        Row(f"fp32 matmul peak (torch.mm {mm_size}^2)", peak / 1e9, "GFLOP/s",
            timing(times["mm"]), f"threads {torch.get_num_threads()}"),
        Row("DiT training step", achieved / 1e9, "GFLOP/s", timing(times["step"]),
            f"{flops / 1e9:.1f} GFLOP/step (fwd+bwd), batch {batch}"),
        Row("model FLOP utilisation", 100 * achieved / peak, "%", None,
            f"median step; best step {100 * best / peak:.0f} %; target >= 50 %"),
    ]


# --------------------------------------------------------------------------------- 3. windows


class MaskedSDPA(nn.Module):
    """The peer of the block-sparse path: fused SDPA over all L x L pairs with a boolean mask."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def windows_vs_global(size: int, window: int, batch: int, rounds: int) -> list[Row]:
    cfg = dict(size=size, channels=1, depth=4, width=128, heads=4, patch=1, classes=0)
    dense = ours(**cfg)
    tiled = ours(**cfg, windows=(window,) * 4)
    masked = ours(**cfg, windows=(window,) * 4)
    for block in masked.blocks:
        block.attn.tiles = MaskedSDPA(block.attn.mask)
    x, t, _, target = inputs(batch, 1, size)
    t = t.float()
    with torch.no_grad():  # the same function: the block-sparse path is exact
        assert torch.allclose(tiled(x, t), masked(x, t), atol=1e-5)
    steps = {name: training_step(m, lambda m=m: m(x, t), target) for name, m in
             [("global", dense), ("window: block-sparse", tiled), ("window: masked SDPA", masked)]}
    times = interleaved(steps, rounds)
    note = f"DiT-tiny/1, {size}x{size} = {size * size} tokens, batch {batch}"
    rows = [Row(f"{name} step", batch / statistics.median(s), "images/s", timing(s), note)
            for name, s in times.items()]
    rows += [
        Row(f"window {window} (block-sparse) / global time",
            paired_ratio(times["window: block-sparse"], times["global"]), "x", None,
            "target <= 1"),
        Row(f"window {window} (masked SDPA) / global time",
            paired_ratio(times["window: masked SDPA"], times["global"]), "x", None,
            "the alternative the block-sparse path replaces"),
    ]
    return rows


def main() -> None:
    q = quick()
    rounds = 3 if q else 7
    # DiT-S/2's depth, width, heads and patch; a 16x16x4 latent keeps a CPU step near a second.
    s2 = dict(size=8 if q else 16, channels=4, depth=4 if q else 12, width=384, heads=6,
              patch=2)
    params = {"threads": torch.get_num_threads(), "rounds": rounds, "dit_s2_like": s2,
              "throughput_batch": 16, "mfu_batch": 64, "window": 5,
              "window_size": 16 if q else 32, "window_batch": 8}
    rows = vs_diffusers(s2, batch=16, rounds=rounds)
    rows += mfu(s2, batch=64, rounds=3, mm_size=1024 if q else 2048)
    rows += windows_vs_global(params["window_size"], 5, batch=8, rounds=rounds)
    print_table("DiT training speed (ratios are medians of per-round ratios)", rows)
    path = write_results("train", rows, params)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
