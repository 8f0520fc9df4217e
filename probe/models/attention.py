"""Multi-head self-attention on a token grid: global or local 2-D windows, two backends.

- `sdpa` (training): PyTorch's fused scaled-dot-product attention. A windowed layer runs
  block-sparse instead (`WindowTiles`): queries are cut into tiles, and each tile attends only to
  the halo of keys its windows can reach, so a 5x5 window on a 32x32 grid scores ~7x fewer pairs.
- `explicit` (probing): the softmax is materialised and passed through the `pattern` hook point
  ([batch, head, query, key]); it is also the path torch.func transforms (vmap/vjp) go through.

A window of size w keeps, for a query at (y, x), the keys at |dy| <= w//2 and |dx| <= w//2 (a w x w
square centred on the query, clipped at the borders). A `Partition(p)` instead tiles the grid
into non-overlapping p x p squares (Swin, DiffiT) and a query sees only the keys of its own
square; squares at the bottom/right edge are cut short when p does not divide the grid. The fast
path runs each square as its own small attention (`Partitions`); the explicit path keeps the
full [query, key] grid with exact zeros outside the query's square, so probes read the same
maps for every layer kind. Both backends compute the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from probe.models.hooks import HookPoint

BACKENDS = ("sdpa", "explicit")
TILE = 8  # query tile side of the block-sparse window path


def window_mask(height: int, width: int, window: int, device=None) -> torch.Tensor:
    """Bool [L, L]: True where query (row) may attend to key (column)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                            indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    radius = window // 2
    return ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)


@dataclass(frozen=True)
class Partition:
    """Non-overlapping size x size windows tiling a layer's token grid (spec "LAYERS:pSIZE")."""

    size: int

    def __str__(self) -> str:
        return f"p{self.size}"


Window = int | Partition  # per layer: 0 = global, w = sliding w x w window, Partition(p)


def effective_window(window: Window, grid: tuple[int, int]) -> Window:
    """A window that covers the whole grid wherever the query is, is global attention (0)."""
    if isinstance(window, Partition):
        return 0 if window.size >= max(grid) else window
    return 0 if window >= 2 * max(grid) - 1 else window


def partition_mask(height: int, width: int, size: int, device=None) -> torch.Tensor:
    """Bool [L, L]: True where query (row) and key (column) lie in the same partition."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device) // size,
                            torch.arange(width, device=device) // size, indexing="ij")
    cell = (ys * width + xs).flatten()  # a partition id, unique per square
    return cell[:, None] == cell[None]


def explicit_attention(q, k, v, pattern: HookPoint | None = None, mask=None, bias=None,
                       scale: float | None = None):
    """softmax(q k^T * scale + bias, masked) v with the probabilities passed through `pattern`.

    q, k, v: [B, heads, L, d]; mask: bool [.., L, L] (True = may attend); bias: float [.., L, L].
    """
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if pattern is not None:
        probs = pattern(probs)
    return probs @ v


class WindowTiles(nn.Module):
    """Block-sparse local attention for one grid and window size (the fast training path).

    The grid is padded to whole TILE x TILE query tiles; each tile's keys are the (TILE + 2r)^2
    halo around it, taken as an `unfold` view of the padded grid (one copy, cheap backward), and
    the tile's small softmax runs in plain batched matmuls. An additive mask removes keys outside
    each query's window and the padding, so the result equals masked global attention exactly.
    Measured on CPU at 32x32 tokens, 5x5 windows: ~1.7x faster than global fused SDPA, fwd+bwd,
    and faster than SDPA with the same tile mask (CPU SDPA gains nothing from small masked blocks).
    """

    def __init__(self, height: int, width: int, window: int):
        super().__init__()
        self.height, self.width, self.radius = height, width, window // 2
        t = self.tile = min(TILE, max(height, width))
        r = self.radius
        self.tiles_y, self.tiles_x = math.ceil(height / t), math.ceil(width / t)
        halo = t + 2 * r
        # Query offset within its tile vs key offset within the halo, shared by every tile.
        qy, qx = (a.flatten() for a in torch.meshgrid(torch.arange(t), torch.arange(t),
                                                       indexing="ij"))
        ky, kx = (a.flatten() - r for a in torch.meshgrid(torch.arange(halo), torch.arange(halo),
                                                           indexing="ij"))
        near = ((qy[:, None] - ky[None]).abs() <= r) & ((qx[:, None] - kx[None]).abs() <= r)
        oy = torch.arange(self.tiles_y)[:, None] * t  # tile origins
        ox = torch.arange(self.tiles_x)[None, :] * t
        key_y, key_x = oy[..., None] + ky, ox[..., None] + kx  # [ty, 1, halo^2], [1, tx, halo^2]
        key_inside = ((key_y >= 0) & (key_y < height) & (key_x >= 0) & (key_x < width))
        query_inside = ((oy[..., None] + qy < height) & (ox[..., None] + qx < width))
        allowed = near & key_inside.reshape(-1, 1, halo * halo)  # [tiles, t*t, halo^2]
        # Padding queries (output discarded) attend everywhere so no softmax row is empty.
        allowed |= ~query_inside.reshape(-1, t * t, 1)
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, q, k, v):
        """q, k, v: [B, heads, L, d] on the grid -> [B, heads, L, d]."""
        b, h, _, d = q.shape
        t, r = self.tile, self.radius
        ty, tx = self.tiles_y, self.tiles_x
        pad_y, pad_x = ty * t - self.height, tx * t - self.width
        halo = t + 2 * r

        def on_grid(x, pad):  # [B, h, L, d] -> [B*h, H', W', d], zero-padded
            return F.pad(x.reshape(b * h, self.height, self.width, d), (0, 0, *pad))

        qt = on_grid(q, (0, pad_x, 0, pad_y)).reshape(b * h, ty, t, tx, t, d)
        qt = qt.transpose(2, 3).reshape(b * h, ty * tx, t * t, d)

        def halos(x):  # [B*h, tiles, halo^2, d]
            grid = on_grid(x, (r, pad_x + r, r, pad_y + r))
            view = grid.unfold(1, halo, t).unfold(2, halo, t)  # [B*h, ty, tx, d, halo, halo]
            return view.permute(0, 1, 2, 4, 5, 3).reshape(b * h, ty * tx, halo * halo, d)

        scores = (qt * d**-0.5) @ halos(k).transpose(-1, -2) + self.bias
        out = scores.softmax(-1) @ halos(v)  # [B*h, tiles, t*t, d]
        out = out.reshape(b * h, ty, tx, t, t, d).transpose(2, 3).reshape(b, h, ty * t, tx * t, d)
        return out[:, :, : self.height, : self.width].reshape(b, h, self.height * self.width, d)


class Partitions(nn.Module):
    """Attention inside non-overlapping size x size partitions (the fast path of `Partition`).

    The grid is padded to whole partitions, each partition becomes one batch entry of a small
    fused SDPA call, and an additive mask removes padded keys (a padded query still sees the real
    keys of its square, so no softmax row is empty; its output is cut off). `bias` is an optional
    [heads, size^2, size^2] term shared by every partition (DiffiT's relative position bias).
    """

    def __init__(self, height: int, width: int, size: int):
        super().__init__()
        self.height, self.width, self.size = height, width, size
        self.rows, self.cols = math.ceil(height / size), math.ceil(width / size)
        ys = torch.arange(self.rows * size) < height
        xs = torch.arange(self.cols * size) < width
        real = (ys[:, None] & xs[None]).reshape(self.rows, size, self.cols, size)
        real = real.transpose(1, 2).reshape(self.rows * self.cols, 1, size * size)
        pad = torch.zeros(real.shape).masked_fill(~real, float("-inf"))
        ragged = height % size or width % size
        self.register_buffer("pad", pad if ragged else None, persistent=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h, L, d] on the grid -> [B, h, partitions, size^2, d], both row-major."""
        b, h, _, d = x.shape
        p = self.size
        x = F.pad(x.reshape(b, h, self.height, self.width, d),
                  (0, 0, 0, self.cols * p - self.width, 0, self.rows * p - self.height))
        x = x.reshape(b, h, self.rows, p, self.cols, p, d).transpose(3, 4)
        return x.reshape(b, h, self.rows * self.cols, p * p, d)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of `split`, padding dropped."""
        b, h, _, _, d = x.shape
        p = self.size
        x = x.reshape(b, h, self.rows, self.cols, p, p, d).transpose(3, 4)
        x = x.reshape(b, h, self.rows * p, self.cols * p, d)[:, :, : self.height, : self.width]
        return x.reshape(b, h, self.height * self.width, d)

    def forward(self, q, k, v, bias: torch.Tensor | None = None):
        b, h, _, d = q.shape
        n, p2 = self.rows * self.cols, self.size**2
        mask = None
        if bias is not None or self.pad is not None:
            mask = torch.zeros(h, n, p2, p2, dtype=q.dtype, device=q.device)
            if bias is not None:
                mask = mask + bias.unsqueeze(1)
            if self.pad is not None:
                mask = mask + self.pad.to(q.dtype)
            mask = mask.reshape(h * n, p2, p2)

        def rows(x):  # 4-D [B, heads * partitions, p^2, d]: what the fused kernels take
            return self.split(x).reshape(b, h * n, p2, d)

        out = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), attn_mask=mask)
        return self.merge(out.reshape(b, h, n, p2, d))


def window_modules(module: nn.Module, grid: tuple[int, int], window: Window) -> None:
    """Give an attention `module` its window: attributes `window` (sliding side, 0 if none) and
    `partition` (side, 0 if none), the explicit path's `mask` and the `partitions` fast path."""
    if isinstance(window, Partition):  # one partition over the whole grid: global attention
        window = effective_window(window, grid)
    module.partition = window.size if isinstance(window, Partition) else 0
    module.window = 0 if module.partition else window
    module.partitions = Partitions(*grid, module.partition) if module.partition else None
    if module.window:
        module.register_buffer("mask", window_mask(*grid, module.window), persistent=False)
    elif module.partition:
        module.register_buffer("mask", partition_mask(*grid, module.partition),
                               persistent=False)
    else:
        module.mask = None


class Attention(nn.Module):
    """Self-attention over a `grid` of tokens with an optional local window and a hook point."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], window: Window = 0,
                 qkv_bias: bool = True, backend: str = "sdpa"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.grid, self.backend = heads, grid, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.pattern = HookPoint()
        self.heads_out = HookPoint()  # [B, head, token, head_dim], before the output projection
        window_modules(self, grid, window)
        self.tiles = WindowTiles(*grid, self.window) if self.window else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.backend == "explicit" or self.pattern.active:
            out = explicit_attention(q, k, v, self.pattern, mask=self.mask)
        elif self.window:
            out = self.tiles(q, k, v)
        elif self.partition:
            out = self.partitions(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.heads_out(out)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def set_backend(model: nn.Module, backend: str) -> str:
    """Switch every attention module of `model` to `backend`; returns the previous one."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}")
    previous = "sdpa"
    for module in model.modules():
        if hasattr(module, "backend") and isinstance(module.backend, str):
            previous = module.backend
            module.backend = backend
    return previous
