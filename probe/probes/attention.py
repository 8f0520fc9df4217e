"""Attention maps of every attention layer and head, streamed to probes/<run-id>/attention.h5.

Inputs are fixed: `probe_indices` picks the images (same held-out images for every run of a data
set) and `fixed_noise` the noise per (image, sigma), so runs are compared on identical inputs.
Every hook point whose name ends in `.pattern` ([batch, head, query, key]) is an attention layer,
whatever the architecture (DiT `blocks.{i}.attn.pattern`, diffusers UNet `...processor.pattern`,
DiffiT, ...); where a module also offers `.pattern_full` (U-DiT: its per-group maps put back on
the full grid) that one is read instead, so queries and keys are always tokens of the layer's
own grid, row-major. Layers are numbered in the order the forward pass reaches them.

Streaming: one forward pass per (sigma, batch of images). The hook function at each layer
computes that layer's locality metrics and hands its maps to the file, then drops them, so
memory holds one layer's maps, never all of them (`probe.models.hooks.capture` would keep every
layer, which grows with depth). The maps are compressed in worker threads while the forward pass
goes on, and written as finished chunks (write_direct_chunk, bypassing the chunk cache). Each
finished forward pass is a unit of `ResumableH5`: a killed probe leaves only
`attention.h5.partial`, and the rerun skips the finished passes and renames the file at the end.

Layout of attention.h5 (maps float16, gzip 1 + shuffle, one chunk per query x key map)::

    /attention/sigmas    float64 [sigma]
    /attention/images    int64   [image]            data-set rows
    /attention/pixels    uint8   [image, H, W, C]   the clean images
    /attention/maps      float16 [image, sigma, layer, head, query, key]
                         only when every layer shares one grid and head count (DiT, windowed
                         DiT) and --store is not none; head has length 1 under mean-heads
    /attention/layers/<hook name>/      one group per layer; attrs layer (forward-order index),
                         hook, grid_height, grid_width, stride_px (pixels per token: the patch
                         size, or a UNet level's downsampling), window (0: global), heads
        maps             float16 [image, sigma, head, query, key]: read layers from here. A
                         virtual view of /attention/maps when that exists, else a real dataset
                         (UNets, U-DiT, DiffiT: layers at several resolutions)
        metrics          float32 [image, sigma, head, metric] locality of every head, whatever
                         --store says (attr `names`; see probe.metrics.locality)
    /attention/progress/s<i>-b<j>       one group per finished forward pass

Root attrs: run_id, arch, n ("" when unknown), split, checkpoint, checkpoint_sha256,
data_sha256, subset_sha256, command, store, source, seed, image_size, channels, dims, hooks
(JSON, forward order) and per layer windows, grid_heights, grid_widths, strides_px, heads; for
a shared grid grid_height, grid_width, patch_size (-1 when layers differ); metric_names, radii.
"""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from probe.artifacts import Artifacts
from probe.config import ATTENTION_STORES, AttentionConfig
from probe.data.loader import to_uint8
from probe.errors import ProbeError
from probe.metrics import tables
from probe.metrics.locality import (
    Grid,
    gap_correlation,
    locality_metrics,
    metric_names,
    tidy_table,
)
from probe.models.hooks import hook_points, hooks
from probe.probes.common import ResumableH5, fixed_noise, parse_sigmas, probe_indices

FILENAME = "attention.h5"
DIMS = "image, sigma, layer, head, query, key"
BYTES_PER_VALUE = 2  # float16 maps
GB = 1e9


@dataclass(frozen=True)
class Layer:
    index: int  # in forward order
    hook: str  # hook point name, relative to the backbone
    heads: int
    grid: Grid
    window: int  # local window side in tokens, 0 = global


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
        layers.append(Layer(index, name, shape[1], grid, int(getattr(module, "window", 0) or 0)))
    return layers


# ------------------------------------------------------------------------- size and queries


def stored_heads(layer: Layer, store: str) -> int:
    return {"all": layer.heads, "mean-heads": 1, "none": 0}[store]


def map_bytes(layers: list[Layer], images: int, sigmas: int, store: str) -> int:
    """Uncompressed size of the maps `store` keeps."""
    return sum(images * sigmas * stored_heads(layer, store) * layer.grid.tokens**2
               * BYTES_PER_VALUE for layer in layers)


def check_size(layers: list[Layer], images: int, sigmas: int, store: str, max_gb: float,
               run_id: str) -> None:
    size = map_bytes(layers, images, sigmas, store)
    if size > max_gb * GB:
        raise ProbeError(f"{run_id}: the attention maps would take {size / GB:.2f} GB, more "
                         f"than --max-gb {max_gb:g}; use --store mean-heads or none, fewer "
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


def query_positions(query: str, grids: list[Grid], run_id: str = "") -> list[tuple[int, int]]:
    """Token (row, column) of `query` in each grid.

    "center" is each grid's centre; "y,x" is a token of the finest grid, placed in coarser grids
    at the token that covers the same pixel.
    """
    finest = max(grids, key=lambda g: g.tokens)
    if query == "center":
        return [(g.height // 2, g.width // 2) for g in grids]
    y, x = (int(v) for v in query.split(","))
    if not (0 <= y < finest.height and 0 <= x < finest.width):
        where = f" of {run_id}" if run_id else ""
        raise ProbeError(f"query {y},{x} is outside the {finest.height}x{finest.width} token "
                         f"grid{where}")
    return [(min(g.height - 1, int((y + 0.5) * finest.stride_px / g.stride_px)),
             min(g.width - 1, int((x + 0.5) * finest.stride_px / g.stride_px))) for g in grids]


def batch_size(layers: list[Layer], images: int, budget_mb: float) -> int:
    """Images per forward pass: the largest layer's scores, probabilities and metric temporaries
    (about 4 float32 maps) fit in `budget_mb`."""
    per_image = max(layer.heads * layer.grid.tokens**2 * 4 * 4 for layer in layers)
    return int(min(images, max(1, budget_mb * 1e6 // per_image)))


# ------------------------------------------------------------------------------- writing


GZIP_LEVEL = 1  # higher levels cost ~1.6x the time on attention maps for ~2 % smaller files


def _maps_dataset(group: h5py.Group, name: str, shape: tuple[int, ...]) -> h5py.Dataset:
    chunks = (1,) * (len(shape) - 2) + shape[-2:]  # one query x key map per chunk
    return group.require_dataset(name, shape, "f2", exact=True, chunks=chunks,
                                 compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)


def _encode(chunk: np.ndarray) -> bytes:
    """What HDF5's shuffle + deflate filters make of one chunk: its bytes grouped by
    significance, then zlib. Written with write_direct_chunk, readers decode it as usual."""
    planes = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1, chunk.itemsize).T
    return zlib.compress(planes.tobytes(), GZIP_LEVEL)


class StreamWriter:
    """Hook functions that turn each layer's probabilities into metrics and stored maps at once.

    `at(sigma_index, i0, i1)` says which slot the next forward pass fills; `finish()` after the
    pass writes what is still in flight. Compression runs in worker threads (zlib releases the
    GIL, h5py does not) while the forward pass goes on to the next layer; at most one layer's
    maps wait for it, so memory stays independent of depth (`workers=0`: compress inline). Use
    as a context manager.
    """

    def __init__(self, file: h5py.File, layers: list[Layer], images: int, sigmas: int,
                 store: str, radii: tuple[int, ...], workers: int = 2):
        self.layers = {layer.hook: layer for layer in layers}
        self.store, self.radii = store, radii
        self.names = metric_names(radii)
        root = file.require_group("attention")
        signature = {(la.grid.height, la.grid.width, stored_heads(la, store)) for la in layers}
        self.shared = store != "none" and len(signature) == 1
        if self.shared:
            heads, tokens = stored_heads(layers[0], store), layers[0].grid.tokens
            shape = (images, sigmas, len(layers), heads, tokens, tokens)
            shared = _maps_dataset(root, "maps", shape)
        self.metrics, self.maps = {}, {}
        for layer in layers:
            g = root.require_group(f"layers/{layer.hook}")
            g.attrs.update({"layer": layer.index, "hook": layer.hook, "heads": layer.heads,
                            "grid_height": layer.grid.height, "grid_width": layer.grid.width,
                            "stride_px": layer.grid.stride_px, "window": layer.window})
            metrics = g.require_dataset("metrics", (images, sigmas, layer.heads,
                                                    len(self.names)), "f4", exact=True)
            metrics.attrs["names"] = json.dumps(self.names)
            self.metrics[layer.hook] = metrics
            if store == "none":
                continue
            tokens, heads = layer.grid.tokens, stored_heads(layer, store)
            if self.shared:
                if "maps" not in g:  # a view of the layer's slice of /attention/maps
                    view = h5py.VirtualLayout((images, sigmas, heads, tokens, tokens), "f2")
                    source = h5py.VirtualSource(".", "/attention/maps", shape=shape)
                    view[...] = source[:, :, layer.index]
                    g.create_virtual_dataset("maps", view, fillvalue=0)
                self.maps[layer.hook] = (shared, (layer.index,))
            else:
                self.maps[layer.hook] = (_maps_dataset(g, "maps", (images, sigmas, heads,
                                                                   tokens, tokens)), ())
        self.pool = ThreadPoolExecutor(workers) if workers else None
        self.pending: list = []  # (dataset, chunk offset, future of its bytes)
        self.slot = (0, 0, 0)
        self.written: set[str] = set()

    def at(self, sigma_index: int, i0: int, i1: int) -> None:
        self.slot, self.written = (sigma_index, i0, i1), set()

    def __call__(self, x: torch.Tensor, name: str) -> None:
        si, i0, i1 = self.slot
        layer = self.layers[name]
        expected = (i1 - i0, layer.heads, layer.grid.tokens, layer.grid.tokens)
        if tuple(x.shape) != expected:
            raise ProbeError(f"{name}: maps of shape {list(x.shape)}, expected {list(expected)}")
        probs = x.detach().float()
        values = locality_metrics(probs, layer.grid, self.radii)
        self.metrics[name][i0:i1, si] = torch.stack([values[k] for k in self.names], -1).numpy()
        if self.store != "none":
            kept = (probs if self.store == "all" else probs.mean(1, keepdim=True)).half().numpy()
            self.drain()  # the previous layer's maps: at most one layer in flight
            dataset, prefix = self.maps[name]
            self.pending = [((dataset, (i0 + b, si, *prefix, h, 0, 0),
                              self._submit(kept[b, h])))
                            for b in range(kept.shape[0]) for h in range(kept.shape[1])]
        self.written.add(name)

    def _submit(self, chunk: np.ndarray) -> Future:
        if self.pool is not None:
            return self.pool.submit(_encode, chunk)
        done = Future()  # workers=0: compress here and now
        done.set_result(_encode(chunk))
        return done

    def drain(self) -> None:
        pending, self.pending = self.pending, []
        for dataset, offset, future in pending:
            dataset.id.write_direct_chunk(offset, future.result())

    @property
    def fns(self) -> dict:
        return {name: self for name in self.layers}

    def finish(self) -> None:
        """After a forward pass: write what is in flight, check every layer was reached."""
        self.drain()
        missing = set(self.layers) - self.written
        if missing:
            raise ProbeError(f"attention layer {sorted(missing)[0]} was not reached")

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending = []


@dataclass
class Plan:
    """What one run's probe will do, settled (and validated) before anything is written."""

    indices: np.ndarray
    layers: list[Layer]
    batch: int


def plan(run, cfg: AttentionConfig) -> Plan:
    """Choose the images, find the layers, refuse oversized output and off-grid queries."""
    validate(cfg)
    indices = probe_indices(run, cfg.images, cfg.source, cfg.seed)
    layers = discover(run.denoiser, tuple(run.images(indices[:1]).shape[1:]))
    check_size(layers, len(indices), len(cfg.sigmas), cfg.store, cfg.max_gb, run.run_id)
    for query in cfg.queries:
        query_positions(query, [layer.grid for layer in layers], run.run_id)
    return Plan(indices, layers, batch_size(layers, len(indices), cfg.batch_mb))


def validate(cfg: AttentionConfig) -> None:
    parse_sigmas(",".join(repr(float(s)) for s in cfg.sigmas))
    if cfg.store not in ATTENTION_STORES:
        raise ProbeError(f"--store must be one of {', '.join(ATTENTION_STORES)}")
    if cfg.images < 1:
        raise ProbeError(f"--images must be at least 1, got {cfg.images}")
    if not cfg.max_gb > 0:
        raise ProbeError(f"--max-gb must be positive, got {cfg.max_gb:g}")
    if any(r < 0 for r in cfg.radii):
        raise ProbeError("radii must be non-negative")
    parse_queries(cfg.queries)


def probe_run(run, store: Artifacts, cfg: AttentionConfig, command: str = "",
              the_plan: Plan | None = None) -> Path:
    """Write (or finish) probes/<run-id>/attention.h5 for one run; returns its path."""
    p = the_plan or plan(run, cfg)
    layers, indices = p.layers, p.indices
    x0 = run.images(indices)
    provenance = run.provenance()
    path = store.probe_dir(run.run_id) / FILENAME
    shared_grid = len({(la.grid.height, la.grid.width) for la in layers}) == 1
    attrs = {**provenance, "command": command, "store": cfg.store, "source": cfg.source,
             "seed": cfg.seed, "image_size": int(x0.shape[-1]), "channels": int(x0.shape[1]),
             "dims": DIMS, "hooks": [la.hook for la in layers],
             "windows": [la.window for la in layers],
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
                "sigmas": list(cfg.sigmas), "images": indices.tolist(), "store": cfg.store,
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
        with StreamWriter(f, layers, len(indices), len(cfg.sigmas), cfg.store,
                          cfg.radii) as writer:
            for si, sigma in enumerate(cfg.sigmas):
                for bi, i0 in enumerate(range(0, len(indices), p.batch)):
                    key = f"attention/progress/s{si}-b{bi}"
                    if out.done(key):
                        continue
                    i1 = min(len(indices), i0 + p.batch)
                    noise = torch.stack([fixed_noise(tuple(x0.shape[1:]), cfg.seed, indices[i],
                                                     si) for i in range(i0, i1)])
                    writer.at(si, i0, i1)
                    with torch.no_grad(), hooks(backbone, writer.fns):
                        run.denoiser(x0[i0:i1] + sigma * noise, sigma)
                    writer.finish()
                    out.complete(out.begin(key))
    return path


# ------------------------------------------------------------------------------- reading


def read_layers(path: str | Path) -> tuple[dict, np.ndarray, list[dict]]:
    """Root attrs, sigmas, and per layer its attrs (+ Grid) in forward order."""
    with h5py.File(path, "r") as f:
        attrs = {k: _decode(v) for k, v in f.attrs.items() if not k.startswith("_")}
        sigmas = f["attention/sigmas"][...]
        layers = []
        for hook in attrs["hooks"]:
            a = {k: _decode(v) for k, v in f[f"attention/layers/{hook}"].attrs.items()}
            a["grid"] = Grid(int(a["grid_height"]), int(a["grid_width"]), float(a["stride_px"]))
            layers.append(a)
    return attrs, sigmas, layers


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def locality_table(path: str | Path) -> pd.DataFrame:
    """The tidy locality table of one attention.h5 (means over its images)."""
    attrs, sigmas, layers = read_layers(path)
    with h5py.File(path, "r") as f:
        for layer in layers:
            metrics = f[f"attention/layers/{layer['hook']}/metrics"]
            layer["values"] = metrics[...]
            layer["names"] = json.loads(metrics.attrs["names"])
    n = attrs.get("n", "")
    meta = {"run": attrs["run_id"], "arch": attrs["arch"], "split": attrs.get("split", ""),
            "n": None if n in ("", None) else int(n)}
    return tidy_table(meta, sigmas, layers)


def query_maps(path: str | Path, query: str, sigma_index: int) -> tuple[dict, list[dict]]:
    """One query's attention over each layer's grid, averaged over images and heads.

    Returns the root attrs and per layer: layer, hook, window, query (row, column) and `map`
    [grid_height, grid_width]. Empty when the file stores no maps.
    """
    attrs, _, layers = read_layers(path)
    if attrs.get("store") == "none":
        return attrs, []
    positions = query_positions(query, [la["grid"] for la in layers], attrs["run_id"])
    out = []
    with h5py.File(path, "r") as f:
        for layer, (y, x) in zip(layers, positions):
            g = layer["grid"]
            rows = f[f"attention/layers/{layer['hook']}/maps"][:, sigma_index, :,
                                                                y * g.width + x, :]
            out.append({**{k: layer[k] for k in ("layer", "hook", "window")},
                        "query": (y, x),
                        "map": rows.astype(np.float64).mean((0, 1)).reshape(g.height, g.width)})
    return attrs, out


# ---------------------------------------------------------------------------- the command


def gap_correlation_table(store: Artifacts) -> pd.DataFrame | None:
    """Spearman correlation of tables/locality with tables/generalization's PSNR gap, written to
    tables/locality_gap; None when either table is missing."""
    locality = tables.read_table(store.tables_dir / "locality")
    generalization = tables.read_table(store.tables_dir / "generalization")
    if locality is None or generalization is None:
        return None
    needed = {"run", "sigma", "metric", "value"}
    if not needed <= set(generalization.columns):
        return None
    result = gap_correlation(locality, generalization)
    if len(result):
        tables.write_table(result, store.tables_dir / "locality_gap")
    return result


def _loaders(runs, diffusers, data_config, store, command):
    from probe.runs import load_run

    loaders = [(str(r), lambda r=r: load_run(r, store)) for r in runs]
    if diffusers:
        from probe.models.diffusers_local import load_diffusers_run

        if data_config is None:
            raise ProbeError("--diffusers needs a data set (--dataset, --size, ...)")
        loaders += [(str(d), lambda d=d: load_diffusers_run(d, data_config, store, command))
                    for d in diffusers]
    if not loaders:
        raise ProbeError("give at least one RUN or --diffusers PATH")
    return loaders


def run_attention_locality(runs, store: Artifacts, cfg: AttentionConfig | None = None, *,
                           diffusers=(), data_config=None, command: str = "",
                           figures: bool = True, log=None) -> pd.DataFrame:
    """Probe each run's attention, write its locality tables and the figures; return the table.

    Every run is checked first (weights present, output size, queries on its grid), so bad
    input fails before anything is written. Per run: probes/<id>/attention.h5 and
    probes/<id>/locality.{parquet,csv}; across runs: tables/locality (upserted),
    tables/locality_gap when a PSNR-gap table exists, and figures/ (PNG and PDF).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = cfg or AttentionConfig()
    validate(cfg)
    loaders = _loaders(runs, diffusers, data_config, store, command)
    for _, load in loaders:  # validate all before probing any
        plan(load(), cfg)
    frames, paths = [], []
    for label, load in loaders:
        run = load()
        log(f"attention: {label} ({run.arch})")
        path = probe_run(run, store, cfg, command)
        table = locality_table(path)
        tables.write_table(table, store.probe_dir(run.run_id) / "locality")
        frames.append(table)
        paths.append(path)
        del run
    table = pd.concat(frames, ignore_index=True)
    tables.upsert(store, "locality", table)
    correlation = gap_correlation_table(store)
    if correlation is not None and len(correlation):
        log("rank correlation with the PSNR gap (tables/locality_gap):\n"
            + correlation.to_string(index=False))
    if figures:
        from probe.report.figures import attention_locality_figures

        for figure in attention_locality_figures(store, paths, cfg.queries):
            log(f"figure: {figure}")
    return table
