"""The file of `probe attention-locality`: probes/<run-id>/attention.h5.

Layout (maps float16, gzip 1 + shuffle, one chunk per query x key map)::

    /attention/sigmas    float64 [sigma]
    /attention/images    int64   [image]            data-set rows
    /attention/pixels    uint8   [image, H, W, C]   the clean images
    /attention/maps      float16 [image, sigma, layer, head, query, key]
                         only when every layer shares one grid and head count (DiT, windowed
                         DiT) and --maps is not none; head has length 1 under mean-heads
    /attention/layers/<hook name>/      one group per layer; attrs layer (forward-order index),
                         hook, grid_height, grid_width, stride_px (pixels per token: the patch
                         size, or a UNet level's downsampling), window (0: global), partition
                         (side of non-overlapping partitions, 0: none), heads
        maps             float16 [image, sigma, head, query, key]: read layers from here. A
                         virtual view of /attention/maps when that exists, else a real dataset
                         (UNets, U-DiT, DiffiT: layers at several resolutions)
        metrics          float32 [image, sigma, head, metric] locality of every head, whatever
                         --maps says (attr `names`; see probe.metrics.locality)
    /attention/progress/s<i>-b<j>       one group per finished forward pass

Root attrs: run_id, arch, n ("" when unknown), split, checkpoint, checkpoint_sha256,
data_sha256, subset_sha256, command, store (the --maps mode), source, seed, image_size,
channels, dims, hooks (JSON, forward order) and per layer windows, grid_heights, grid_widths,
strides_px, heads; for a shared grid grid_height, grid_width, patch_size (-1 when layers
differ); metric_names, radii.

`MapWriter` writes the maps as finished chunks (write_direct_chunk, bypassing the chunk cache),
compressed in worker threads while the forward pass goes on.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from probe.errors import ProbeError
from probe.formats.h5 import decode_attrs

FILENAME = "attention.h5"
DIMS = "image, sigma, layer, head, query, key"
BYTES_PER_VALUE = 2  # float16 maps
GZIP_LEVEL = 1  # higher levels cost ~1.6x the time on attention maps for ~2 % smaller files


@dataclass(frozen=True)
class Grid:
    """A height x width token grid, tokens `stride_px` pixels apart."""

    height: int
    width: int
    stride_px: float = 1.0

    @property
    def tokens(self) -> int:
        return self.height * self.width

    def positions(self) -> np.ndarray:
        """[L, 2] (row, column) of each token, row-major."""
        ys, xs = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        return np.stack([ys.ravel(), xs.ravel()], 1)

    def distances(self, norm: str = "euclidean") -> np.ndarray:
        """[L, L] distance in tokens between every query (row) and key (column)."""
        delta = np.abs(self.positions()[:, None, :] - self.positions()[None, :, :])
        if norm == "euclidean":
            return np.sqrt((delta**2).sum(-1))
        if norm == "chebyshev":
            return delta.max(-1)
        raise ValueError(f"unknown norm {norm!r}")

    @property
    def max_radius(self) -> int:
        return max(self.height, self.width) - 1


@dataclass(frozen=True)
class Layer:
    index: int  # in forward order
    hook: str  # hook point name, relative to the backbone
    heads: int
    grid: Grid
    window: int  # local (query-centred, sliding) window side in tokens, 0 = global
    partition: int = 0  # side of the non-overlapping partitions it attends within, 0 = none


def stored_heads(layer: Layer, maps: str) -> int:
    return {"all": layer.heads, "mean-heads": 1, "none": 0}[maps]


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


# ------------------------------------------------------------------------------- writing


def _maps_dataset(group: h5py.Group, name: str, shape: tuple[int, ...]) -> h5py.Dataset:
    chunks = (1,) * (len(shape) - 2) + shape[-2:]  # one query x key map per chunk
    return group.require_dataset(name, shape, "f2", exact=True, chunks=chunks,
                                 compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)


def encode_chunk(chunk: np.ndarray) -> bytes:
    """What HDF5's shuffle + deflate filters make of one chunk: its bytes grouped by
    significance, then zlib. Written with write_direct_chunk, readers decode it as usual."""
    planes = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1, chunk.itemsize).T
    return zlib.compress(planes.tobytes(), GZIP_LEVEL)


class MapWriter:
    """The datasets of every layer, and `write(hook, slot, metrics, maps)` into them.

    `slot` = (sigma index, first image, end image) of a forward pass. Compression runs in worker
    threads (zlib releases the GIL, h5py does not) while the forward pass goes on to the next
    layer; at most one layer's maps wait for it, so memory stays independent of depth
    (`workers=0`: compress inline). Use as a context manager; `drain()` after each pass.
    """

    def __init__(self, file: h5py.File, layers: list[Layer], images: int, sigmas: int,
                 maps: str, names: tuple[str, ...], workers: int = 2):
        self.layers = {layer.hook: layer for layer in layers}
        self.mode = maps
        root = file.require_group("attention")
        signature = {(la.grid.height, la.grid.width, stored_heads(la, maps)) for la in layers}
        self.shared = maps != "none" and len(signature) == 1
        if self.shared:
            heads, tokens = stored_heads(layers[0], maps), layers[0].grid.tokens
            shape = (images, sigmas, len(layers), heads, tokens, tokens)
            shared = _maps_dataset(root, "maps", shape)
        self.metrics, self.maps = {}, {}
        for layer in layers:
            g = root.require_group(f"layers/{layer.hook}")
            g.attrs.update({"layer": layer.index, "hook": layer.hook, "heads": layer.heads,
                            "grid_height": layer.grid.height, "grid_width": layer.grid.width,
                            "stride_px": layer.grid.stride_px, "window": layer.window,
                            "partition": layer.partition})
            metrics = g.require_dataset("metrics", (images, sigmas, layer.heads, len(names)),
                                        "f4", exact=True)
            metrics.attrs["names"] = json.dumps(list(names))
            self.metrics[layer.hook] = metrics
            if maps == "none":
                continue
            tokens, heads = layer.grid.tokens, stored_heads(layer, maps)
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

    def write(self, hook: str, slot: tuple[int, int, int], metrics: np.ndarray,
              maps: np.ndarray | None) -> None:
        """metrics [image, head, metric]; maps float16 [image, stored head, query, key]."""
        si, i0, i1 = slot
        self.metrics[hook][i0:i1, si] = metrics
        if maps is None:
            return
        self.drain()  # the previous layer's maps: at most one layer in flight
        dataset, prefix = self.maps[hook]
        self.pending = [((dataset, (i0 + b, si, *prefix, h, 0, 0), self._submit(maps[b, h])))
                        for b in range(maps.shape[0]) for h in range(maps.shape[1])]

    def _submit(self, chunk: np.ndarray) -> Future:
        if self.pool is not None:
            return self.pool.submit(encode_chunk, chunk)
        done = Future()  # workers=0: compress here and now
        done.set_result(encode_chunk(chunk))
        return done

    def drain(self) -> None:
        pending, self.pending = self.pending, []
        for dataset, offset, future in pending:
            dataset.id.write_direct_chunk(offset, future.result())

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending = []


# ------------------------------------------------------------------------------- reading


def read_layers(path: str | Path) -> tuple[dict, np.ndarray, list[dict]]:
    """Root attrs, sigmas, and per layer its attrs (+ Grid) in forward order."""
    with h5py.File(path, "r") as f:
        attrs = decode_attrs(f.attrs, private=False)
        sigmas = f["attention/sigmas"][...]
        layers = []
        for hook in attrs["hooks"]:
            a = decode_attrs(f[f"attention/layers/{hook}"].attrs)
            a.setdefault("partition", 0)  # files written before partitions existed
            a["grid"] = Grid(int(a["grid_height"]), int(a["grid_width"]), float(a["stride_px"]))
            layers.append(a)
    return attrs, sigmas, layers


def read_metrics(path: str | Path) -> tuple[dict, np.ndarray, list[dict]]:
    """`read_layers` plus each layer's `values` [image, sigma, head, metric] and `names`."""
    attrs, sigmas, layers = read_layers(path)
    with h5py.File(path, "r") as f:
        for layer in layers:
            metrics = f[f"attention/layers/{layer['hook']}/metrics"]
            layer["values"] = metrics[...]
            layer["names"] = json.loads(metrics.attrs["names"])
    return attrs, sigmas, layers


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
            out.append({**{k: layer[k] for k in ("layer", "hook", "window", "partition")},
                        "query": (y, x),
                        "map": rows.astype(np.float64).mean((0, 1)).reshape(g.height, g.width)})
    return attrs, out
