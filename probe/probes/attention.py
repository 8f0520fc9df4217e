"""Attention maps of every attention layer and head, streamed to probes/<run-id>/attention.h5
(layout: probe.formats.attention).

Inputs are fixed: `probe_indices` picks the images (same held-out images for every run of a data
set) and `fixed_noise` the noise per (image, sigma), so runs are compared on identical inputs.
Every hook point whose name ends in `.pattern` ([batch, head, query, key]) is an attention layer,
whatever the architecture (DiT `blocks.{i}.attn.pattern`, diffusers UNet `...processor.pattern`,
DiffiT, ...); where a module also offers `.pattern_full` (U-DiT: its per-group maps put back on
the full grid) that one is read instead, so queries and keys are always tokens of the layer's
own grid, row-major. Layers are numbered in the order the forward pass reaches them.

Streaming: one forward pass per (sigma, batch of images). The hook function at each layer
computes that layer's locality metrics and hands them and its maps to the file's `MapWriter`,
then drops them, so memory holds one layer's maps, never all of them
(`probe.models.hooks.capture` would keep every layer, which grows with depth). Each finished
forward pass is a unit of `ResumableH5`: a killed probe leaves only `attention.h5.partial`, and
the rerun skips the finished passes and renames the file at the end.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe import artifacts
from probe.config import ATTENTION_MAPS, AttentionConfig
from probe.data.loader import to_uint8
from probe.errors import ProbeError
from probe.formats.attention import (
    BYTES_PER_VALUE,
    DIMS,
    Grid,
    Layer,
    MapWriter,
    query_positions,
    stored_heads,
)
from probe.formats.h5 import ResumableH5
from probe.metrics.locality import locality_metrics, metric_names, table_from_file
from probe.models.hooks import hook_points, hooks
from probe.probes.common import check_inputs, probe_indices
from probe.seeding import fixed_noise

GB = 1e9


# ----------------------------------------------------------------------------- discovery


def attention_points(model: torch.nn.Module) -> list[str]:
    """Names of the attention-probability hook points (`*.pattern`, or `*.pattern_full`)."""
    points = hook_points(model)
    return [name + "_full" if name + "_full" in points else name
            for name in points if name.endswith(".pattern")]


def _grid(module, tokens: int, image_hw: tuple[int, int], hook: str) -> Grid:
    """The layer's token grid: the module's own `grid` where it has one, else the image's aspect
    ratio at `tokens` positions (diffusers processors see [B, C, h, w] maps, not a grid)."""
    height, width = image_hw
    grid = getattr(module, "grid", None)
    if isinstance(grid, tuple | list) and len(grid) == 2 and grid[0] * grid[1] == tokens:
        h, w = int(grid[0]), int(grid[1])
    else:
        scale = math.sqrt(height * width / tokens)
        h, w = round(height / scale), round(width / scale)
        if h * w != tokens:
            raise ProbeError(f"{hook}: {tokens} tokens do not form a grid of a {height}x{width} "
                             "image")
    return Grid(h, w, height / h)


@torch.no_grad()
def discover(denoiser, image_shape: tuple[int, ...]) -> list[Layer]:
    """Attention layers in forward order, from one forward pass on one blank image."""
    backbone = denoiser.backbone
    names = attention_points(backbone)
    if not names:
        raise ProbeError("this model has no attention hook points (*.pattern)")
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def record(x: torch.Tensor, name: str) -> None:
        order.append(name)
        shapes[name] = tuple(x.shape)

    with hooks(backbone, {name: record for name in names}):
        denoiser(torch.zeros(1, *image_shape), 1.0)
    repeated = sorted({n for n in order if order.count(n) > 1})
    if repeated:
        raise ProbeError(f"hook point {repeated[0]} fires several times per forward pass")
    layers = []
    for index, name in enumerate(order):
        shape = shapes[name]
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ProbeError(f"{name}: expected [batch, head, query, key], got {list(shape)}")
        module = backbone.get_submodule(name.rsplit(".", 1)[0])
        grid = _grid(module, shape[2], tuple(image_shape[-2:]), name)
        layers.append(Layer(index, name, shape[1], grid, int(getattr(module, "window", 0) or 0),
                            int(getattr(module, "partition", 0) or 0)))
    return layers


# ------------------------------------------------------------------------- size and queries


def map_bytes(layers: list[Layer], images: int, sigmas: int, maps: str) -> int:
    """Uncompressed size of the maps that the --maps mode `maps` keeps."""
    return sum(images * sigmas * stored_heads(layer, maps) * layer.grid.tokens**2
               * BYTES_PER_VALUE for layer in layers)


def check_size(layers: list[Layer], images: int, sigmas: int, maps: str, max_gb: float,
               run_id: str) -> None:
    size = map_bytes(layers, images, sigmas, maps)
    if size > max_gb * GB:
        raise ProbeError(f"{run_id}: the attention maps would take {size / GB:.2f} GB, more "
                         f"than --max-gb {max_gb:g}; use --maps mean-heads or none, fewer "
                         "--images or --sigmas, or raise --max-gb")


def parse_queries(specs) -> tuple[str, ...]:
    """"center" and "y,x" items, separated by ';' or spaces (one or several strings)."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    items = tuple(s for spec in specs for s in re.split(r"[;\s]+", spec.strip()) if s)
    for item in items:
        if item != "center" and not re.fullmatch(r"\d+,\d+", item):
            raise ProbeError(f"bad query {item!r}: use center or y,x (token row, column)")
    if not items:
        raise ProbeError("--queries is empty")
    return items


def batch_size(layers: list[Layer], images: int, budget_mb: float) -> int:
    """Images per forward pass: the largest layer's scores, probabilities and metric temporaries
    (about 4 float32 maps) fit in `budget_mb`."""
    per_image = max(layer.heads * layer.grid.tokens**2 * 4 * 4 for layer in layers)
    return int(min(images, max(1, budget_mb * 1e6 // per_image)))


# ------------------------------------------------------------------------------- streaming


class LocalityHook:
    """The hook function of every attention layer during a forward pass: the layer's locality
    metrics and its kept maps go to the file's `MapWriter` at once.

    `at(sigma_index, i0, i1)` says which slot the next forward pass fills; `finish()` after
    the pass writes what is still in flight and checks every layer was reached.
    """

    def __init__(self, writer: MapWriter, layers: list[Layer], maps: str,
                 radii: tuple[int, ...]):
        self.writer, self.maps, self.radii = writer, maps, radii
        self.layers = {layer.hook: layer for layer in layers}
        self.names = metric_names(radii)
        self.slot = (0, 0, 0)
        self.written: set[str] = set()

    def at(self, sigma_index: int, i0: int, i1: int) -> None:
        self.slot, self.written = (sigma_index, i0, i1), set()

    def __call__(self, x: torch.Tensor, name: str) -> None:
        _, i0, i1 = self.slot
        layer = self.layers[name]
        expected = (i1 - i0, layer.heads, layer.grid.tokens, layer.grid.tokens)
        if tuple(x.shape) != expected:
            raise ProbeError(f"{name}: maps of shape {list(x.shape)}, expected {list(expected)}")
        probs = x.detach().float()
        values = locality_metrics(probs, layer.grid, self.radii)
        metrics = torch.stack([values[k] for k in self.names], -1).numpy()
        kept = None
        if self.maps != "none":
            kept = (probs if self.maps == "all" else probs.mean(1, keepdim=True)).half().numpy()
        self.writer.write(name, self.slot, metrics, kept)
        self.written.add(name)

    @property
    def fns(self) -> dict:
        return {name: self for name in self.layers}

    def finish(self) -> None:
        self.writer.drain()
        missing = set(self.layers) - self.written
        if missing:
            raise ProbeError(f"attention layer {sorted(missing)[0]} was not reached")


@dataclass
class Plan:
    """What one run's probe will do, settled (and validated) before anything is written."""

    indices: np.ndarray
    layers: list[Layer]
    batch: int


def validate(cfg: AttentionConfig) -> None:
    check_inputs(cfg.sigmas, cfg.source, cfg.seed)
    if cfg.maps not in ATTENTION_MAPS:
        raise ProbeError(f"--maps must be one of {', '.join(ATTENTION_MAPS)}")
    if cfg.images < 1:
        raise ProbeError(f"--images must be at least 1, got {cfg.images}")
    if not cfg.max_gb > 0:
        raise ProbeError(f"--max-gb must be positive, got {cfg.max_gb:g}")
    if any(r < 0 for r in cfg.radii):
        raise ProbeError("radii must be non-negative")
    parse_queries(cfg.queries)


def plan_run(run, cfg: AttentionConfig) -> Plan:
    """Choose the images, find the layers, refuse oversized output and off-grid queries."""
    indices = probe_indices(run, cfg.images, cfg.source, cfg.seed)
    layers = discover(run.denoiser, run.image_shape)
    check_size(layers, len(indices), len(cfg.sigmas), cfg.maps, cfg.max_gb, run.run_id)
    for query in cfg.queries:
        query_positions(query, [layer.grid for layer in layers], run.run_id)
    return Plan(indices, layers, batch_size(layers, len(indices), cfg.batch_mb))


def probe_run(run, p: Plan, cfg: AttentionConfig, path: Path, command: str = "") -> Path:
    """Write (or finish) the attention.h5 of one run at `path`."""
    layers, indices = p.layers, p.indices
    x0 = run.images(indices)
    provenance = run.provenance()
    shared_grid = len({(la.grid.height, la.grid.width) for la in layers}) == 1
    attrs = {**provenance, "command": command, "store": cfg.maps, "source": cfg.source,
             "seed": cfg.seed, "image_size": int(x0.shape[-1]), "channels": int(x0.shape[1]),
             "dims": DIMS, "hooks": [la.hook for la in layers],
             "windows": [la.window for la in layers],
             "partitions": [la.partition for la in layers],
             "grid_heights": [la.grid.height for la in layers],
             "grid_widths": [la.grid.width for la in layers],
             "strides_px": [float(la.grid.stride_px) for la in layers],
             "heads": [la.heads for la in layers],
             "grid_height": layers[0].grid.height if shared_grid else -1,
             "grid_width": layers[0].grid.width if shared_grid else -1,
             "patch_size": float(layers[0].grid.stride_px) if shared_grid else -1,
             "metric_names": list(metric_names(cfg.radii)), "radii": list(cfg.radii)}
    # Only what changes the numbers decides whether a partial file is resumed.
    identity = {"checkpoint_sha256": provenance["checkpoint_sha256"], "run": run.run_id,
                "sigmas": list(cfg.sigmas), "images": indices.tolist(), "store": cfg.maps,
                "seed": cfg.seed, "hooks": attrs["hooks"], "radii": list(cfg.radii),
                "batch": p.batch}
    backbone = run.denoiser.backbone
    with ResumableH5(path, attrs, identity) as out:
        f = out.file
        root = f.require_group("attention")
        for name, data in (("sigmas", np.asarray(cfg.sigmas, np.float64)),
                           ("images", indices.astype(np.int64)), ("pixels", to_uint8(x0))):
            if name not in root:
                root.create_dataset(name, data=data)
        with MapWriter(f, layers, len(indices), len(cfg.sigmas), cfg.maps,
                       metric_names(cfg.radii)) as writer:
            hook = LocalityHook(writer, layers, cfg.maps, cfg.radii)
            for si, sigma in enumerate(cfg.sigmas):
                for bi, i0 in enumerate(range(0, len(indices), p.batch)):
                    key = f"attention/progress/s{si}-b{bi}"
                    if out.done(key):
                        continue
                    i1 = min(len(indices), i0 + p.batch)
                    noise = torch.stack([fixed_noise(tuple(x0.shape[1:]), cfg.seed, indices[i],
                                                     si) for i in range(i0, i1)])
                    hook.at(si, i0, i1)
                    with torch.no_grad(), hooks(backbone, hook.fns):
                        run.denoiser(x0[i0:i1] + sigma * noise, sigma)
                    hook.finish()
                    out.complete(out.begin(key))
    return path


class AttentionLocality:
    """The attention-locality probe (protocol: probe.probes.protocol)."""

    name = "attention-locality"
    filename = artifacts.ATTENTION_H5
    table = artifacts.LOCALITY_TABLE

    def validate(self, cfg: AttentionConfig) -> None:
        validate(cfg)

    def training_images(self, cfg: AttentionConfig) -> str:
        return "attention maps of training images (--from train)" if cfg.source == "train" \
            else ""

    def plan(self, runs, cfg: AttentionConfig, paths, log) -> list[Plan]:
        return [plan_run(run, cfg) for run in runs]

    def probe(self, run, plan: Plan, cfg: AttentionConfig, path: Path, command: str,
              log) -> None:
        probe_run(run, plan, cfg, path, command)

    def tidy(self, runs, paths: list[Path], cfg: AttentionConfig) -> pd.DataFrame:
        return pd.concat([table_from_file(p) for p in paths], ignore_index=True)


PROBE = AttentionLocality()
