"""The demo recipe against the previous default, side by side in one process: training speed
(steps/s) and time to memorize (optimiser steps until the N = 10 run's memorized fraction
reaches 0.9).

    demo:     bf-unet-xs, the bf-unet recipe (EDM preconditioning, lr 1e-3, batch 32, EDM EMA)
    previous: dit-tiny/2 with the previous demo's optimiser settings (ddpm, lr 1e-3, batch 32;
              the old EMA warm-up no longer exists, so both use the EMA half-life of the
              family recipes)

Both train on the same 10 MNIST digits (16x16, split a), in chunks of CHUNK steps resumed from
their checkpoints, alternating chunk by chunk so a machine shared with other work slows both
alike. After each chunk the run's EMA model draws SAMPLES samples with its default sampler and
the memorized fraction is measured both ways (plain l2 and normalised images,
probe.metrics.memorization). One torch thread (see bench_train's note on shared cores).

    python -m benchmarks recipes     # writes artifacts/benchmarks/recipes.json
"""

from __future__ import annotations

import dataclasses
import time

import torch

from benchmarks.common import Row, print_table, quick, write_results
from probe.artifacts import Artifacts
from probe.config import RECIPES, DataConfig, ModelConfig, RunConfig, SubsetConfig, TrainConfig
from probe.diffusion.samplers import sample_from_seeds
from probe.metrics import memorization as mem
from probe.runs import load_run
from probe.train import train_run

CHUNK = 250
SAMPLES = 32
TARGET = 0.9


def recipes(max_steps: int) -> dict[str, RunConfig]:
    data = DataConfig(dataset="mnist", size=16)
    subsets = SubsetConfig(ns=(10,), test_size=256)
    common = {"n": 10, "split": "a", "steps": CHUNK, "checkpoint_every": CHUNK,
              "log_every": CHUNK, "sample_grid": 0}
    demo = {**RECIPES["bf-unet"]}
    previous = {**RECIPES["dit"], "objective": "ddpm", "lr": 1e-3, "batch": 32}
    return {"demo (bf-unet-xs, edm)": RunConfig(data, subsets, ModelConfig(arch="bf-unet-xs"),
                                                TrainConfig(**common, **demo)),
            "previous (dit-tiny/2, ddpm)": RunConfig(data, subsets,
                                                     ModelConfig(arch="dit-tiny/2"),
                                                     TrainConfig(**common, **previous))}


def memorized(run) -> tuple[float, float]:
    """(l2, normalised) memorized fraction of SAMPLES samples against the training set."""
    samples = sample_from_seeds(run.denoiser, [(0, i) for i in range(SAMPLES)], "auto", 25)
    train = run.images(run.train_indices)
    mean_image = run.images(run.test_indices).mean(0)
    _, l2 = mem.nearest_neighbours(samples, train, 2, "l2")
    _, cos = mem.nearest_neighbours(samples, train, 2, "cosine", mean_image=mean_image)
    return (mem.memorized_fraction(l2.numpy()),
            mem.memorized_fraction(mem.normalised_distances(cos.numpy())))


def main() -> None:
    torch.set_num_threads(1)
    max_steps = 2 * CHUNK if quick() else 2000
    store = Artifacts.at("artifacts/benchmarks/recipes")
    configs = recipes(max_steps)
    dirs: dict[str, object] = {}
    seconds = {name: 0.0 for name in configs}
    curves: dict[str, list[tuple[int, float, float]]] = {name: [] for name in configs}
    for steps in range(CHUNK, max_steps + 1, CHUNK):
        for name, cfg in configs.items():
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
            start = time.perf_counter()
            dirs[name] = train_run(cfg, store, resume=dirs.get(name), progress=False,
                                   log=lambda m: None)
            seconds[name] += time.perf_counter() - start
            l2, normalised = memorized(load_run(dirs[name], store))
            curves[name].append((steps, l2, normalised))
            print(f"{name}: {steps} steps, memorized l2 {l2:.2f}, normalised {normalised:.2f}",
                  flush=True)
    rows = []
    for name in configs:
        reached = [s for s, _, f in curves[name] if f >= TARGET]
        rows.append(Row(f"{name}: steps/s", max_steps / seconds[name], "steps/s",
                        note=f"{seconds[name]:.0f} s for {max_steps} steps (incl. saving)"))
        rows.append(Row(f"{name}: steps to memorize", reached[0] if reached else float("nan"),
                        "steps", note="normalised memorized fraction >= 0.9"
                        + ("" if reached else f": not within {max_steps}")))
    demo, previous = configs
    rows.append(Row("steps/s ratio demo / previous",
                    (max_steps / seconds[demo]) / (max_steps / seconds[previous]), "x"))
    print_table("Training recipes: the demo's against the previous default", rows)
    write_results("recipes", rows, {"chunk": CHUNK, "samples": SAMPLES, "max_steps": max_steps,
                                    "curves": curves})


if __name__ == "__main__":
    main()
