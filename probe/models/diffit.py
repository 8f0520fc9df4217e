"""DiffiT (Hatamizadeh et al., "DiffiT: Diffusion Vision Transformers for Image Generation",
arXiv 2312.02139): time-dependent self-attention, in an image-space U and an isotropic latent model.

- TMSA (`TMSA`): the time token enters the attention itself. q, k, v = x W_s + t W_t, with
  t W_t added to all tokens before the heads split; softmax(q k^T / sqrt(d) + B) v with a learned
  relative position bias B[head, dy, dx] (Swin-style: equal offsets share a bias; one table of
  (2H-1)(2W-1) entries per head over the layer's H x W token grid, or of (2p-1)^2 entries when
  the layer attends within p x p partitions). There is no adaLN: TMSA is the only path by which
  the noise level reaches a transformer block.
- DiffiT transformer block (`DiffiTBlock`): x = x + TMSA(LN(x), t); x = x + MLP(LN(x)).
- Image-space DiffiT (`DiffiT`): a U of DiffiT ResBlocks, x_hat = Conv3x3(Swish(GN(x))),
  x = DiffiTBlock(x_hat, t) + x (paper eqs. 9-10). Conv3x3 stem ("tokenizer"); per level
  `blocks[l]` ResBlocks at width C * mults[l]; between levels a stride-2 3x3 conv down and a
  nearest-neighbour 2x upsample + 3x3 conv up; skips concatenated and projected by a 1x1 conv;
  the decoder mirrors every level but the lowest; head GN -> Swish -> Conv3x3. The paper gives
  no code for this model: the up/down operators, the time-token width (4C, as in ADM) and the
  head are our choices. The head conv is zero-initialised (our choice, matching the release's
  zero-initialised latent output layer), so a fresh model outputs exactly zero.
- Latent DiffiT (`LatentDiffiT`): DiT-style patchify + fixed 2-D sin-cos position embedding,
  a stack of DiffiT blocks conditioned on c = t_emb + y_emb through TMSA only, final
  LN -> SiLU -> Linear (zero-initialised, as in the release) and unpatchify.

Layer indexing (for `cfg.windows` and hook names): every transformer block is `blocks.{i}`,
numbered in execution order. Latent: i = 0..depth-1. Image space: the encoder levels from the
finest to the coarsest (level l contributes blocks[l] layers), then the decoder levels from the
second-coarsest back to the finest; `DiffiT.layer_grids` lists each layer's token grid. The
paper's image-space model attends within non-overlapping windows at every stage (4x4 tokens on
CIFAR-10, 8x8 on FFHQ-64): an image preset's `partition` is that side, applied to every layer
(`Partition`, probe.models.attention). A spec overrides it per layer: "0-1:5" restricts layers 0
and 1 to the toolkit's query-centred 5x5 window, "all:p8" partitions every layer 8x8,
"all:global" attends globally. A window or partition at least as wide as a layer's whole grid is
global attention there (a partition is clipped at the grid's edge when it does not divide it).
The relative position bias applies inside any window.

Hook points: `blocks.{i}.attn.pattern` [batch, head, query, key] (tokens row-major over the
layer's grid) and `blocks.{i}.attn.heads_out` [batch, head, token, head_dim].

Backbone contract shared by the zoo: `forward(x, noise_cond, class_labels=None)`, x [B, C, H, W],
noise_cond [B], returns [B, C_out, H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probe.models.attention import (
    Partition,
    Window,
    effective_window,
    explicit_attention,
    window_modules,
)
from probe.models.dit import (
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    init_patch_projection,
    sincos_2d,
    unpatchify,
)
from probe.models.hooks import HookPoint


def relative_position_index(height: int, width: int,
                            extent: tuple[int, int] | None = None) -> torch.Tensor:
    """Long [L, L]: the bias-table row of each (query, key) pair, a bijection of (dy, dx).

    The table covers offsets |dy| < extent[0], |dx| < extent[1] (default: the whole grid, so
    (2H-1)(2W-1) rows); a partitioned layer's table covers one partition. Pairs farther apart
    (in different partitions, where attention is masked anyway) get row 0.
    """
    th, tw = extent or (height, width)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy, dx = ys[:, None] - ys[None], xs[:, None] - xs[None]
    index = (dy + th - 1) * (2 * tw - 1) + dx + tw - 1
    return torch.where((dy.abs() < th) & (dx.abs() < tw), index, 0)


def xavier_linears(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear, visited in `modules()` order
    (the order fixes which random numbers each layer draws)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class TMSA(nn.Module):
    """Time-dependent multi-head self-attention with relative position bias on a token grid.

    `backend` is "sdpa" (fused kernel) or "explicit" (softmax materialised and passed through the
    `pattern` hook point); the explicit path is taken whenever `pattern` is active.
    """

    def __init__(self, dim: int, temb_dim: int, heads: int, grid: tuple[int, int],
                 window: Window = 0, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        height, width = grid
        self.heads, self.grid, self.backend = heads, grid, "sdpa"
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.qkv_temb = nn.Linear(temb_dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        window_modules(self, grid, window)  # window, partition, mask, partitions
        # One bias per offset a query can see: the grid's offsets, or one partition's.
        extent = (self.partition,) * 2 if self.partition else grid
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * extent[0] - 1) * (2 * extent[1] - 1), heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index",
                             relative_position_index(height, width, extent), persistent=False)
        if self.partition:  # the same rows for the (query, key) pairs of one partition
            self.register_buffer("partition_position_index",
                                 relative_position_index(*extent), persistent=False)
        self.pattern = HookPoint()
        self.heads_out = HookPoint()

    def position_bias(self) -> torch.Tensor:
        """The additive bias [heads, L, L] over the whole grid."""
        return self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)

    def partition_bias(self) -> torch.Tensor:
        """The additive bias [heads, p^2, p^2] inside one partition (the fast path's)."""
        return self.relative_position_bias_table[self.partition_position_index].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x) + self.qkv_temb(temb).unsqueeze(1).to(x.dtype)
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.backend == "explicit" or self.pattern.active:
            out = explicit_attention(q, k, v, self.pattern, mask=self.mask,
                                     bias=self.position_bias().to(q.dtype))
        elif self.partition:
            out = self.partitions(q, k, v, bias=self.partition_bias().to(q.dtype))
        else:
            bias = self.position_bias().to(q.dtype)
            if self.mask is not None:
                bias = bias.masked_fill(~self.mask, float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.heads_out(out)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DiffiTBlock(nn.Module):
    """x = x + TMSA(LN(x), t); x = x + MLP(LN(x)) on tokens [B, L, C]."""

    def __init__(self, dim: int, temb_dim: int, heads: int, grid: tuple[int, int],
                 window: Window = 0, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = TMSA(dim, temb_dim, heads, grid, window)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), temb)
        return x + self.mlp(self.norm2(x))


class DiffiTResBlock(DiffiTBlock):
    """x_hat = Conv3x3(Swish(GN(x))); x = DiffiTBlock(x_hat, t) + x, on maps [B, C, H, W]."""

    def __init__(self, dim: int, temb_dim: int, heads: int, grid: tuple[int, int],
                 window: Window = 0, mlp_ratio: float = 4.0, groups: int = 32):
        super().__init__(dim, temb_dim, heads, grid, window, mlp_ratio)
        if dim % groups:
            raise ValueError(f"width {dim} is not divisible by {groups} norm groups")
        self.gn = nn.GroupNorm(groups, dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.silu(self.gn(x)))
        tokens = super().forward(h.flatten(2).transpose(1, 2), temb)
        return x + tokens.transpose(1, 2).reshape(x.shape)


def _conditioning(t_embedder, y_embedder, noise_cond, class_labels):
    c = t_embedder(noise_cond)
    if y_embedder is not None:
        if class_labels is None:  # unconditional use of a conditional model: the null class
            class_labels = torch.full((noise_cond.shape[0],), y_embedder.num_classes,
                                      device=noise_cond.device, dtype=torch.long)
        c = c + y_embedder(class_labels)
    return c


def _effective_windows(windows, grids) -> tuple[Window, ...]:
    """A window covering a layer's whole grid is global attention there (stored as 0)."""
    return tuple(effective_window(w, g) for w, g in zip(windows, grids))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv to `out` channels."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DiffiT(nn.Module):
    """Image-space DiffiT: a U of DiffiT ResBlocks (see the module docstring for the layout)."""

    def __init__(self, image_size: int = 32, in_channels: int = 1, width: int = 128,
                 mults: tuple[int, ...] = (1, 2, 2, 2), blocks: tuple[int, ...] = (2, 2, 2, 2),
                 heads: int = 4, mlp_ratio: float = 4.0, temb_mult: int = 4,
                 norm_groups: int = 32, num_classes: int = 0, class_dropout: float = 0.1,
                 learn_sigma: bool = False, windows: tuple[Window, ...] | None = None):
        super().__init__()
        if len(mults) != len(blocks) or not mults:
            raise ValueError(f"{len(mults)} width multipliers for {len(blocks)} levels")
        levels = len(mults)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1} "
                             f"({levels} levels)")
        self.in_channels, self.mults, self.level_blocks = in_channels, tuple(mults), tuple(blocks)
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        widths = [width * m for m in mults]
        temb_dim = width * temb_mult
        # The layer plan, in execution order: (level, width, grid side).
        plan = [(lv, widths[lv], image_size >> lv) for lv in range(levels)
                for _ in range(blocks[lv])]
        plan += [(lv, widths[lv], image_size >> lv) for lv in reversed(range(levels - 1))
                 for _ in range(blocks[lv])]
        self.layer_grids = tuple((g, g) for _, _, g in plan)
        windows = tuple(windows) if windows else (0,) * len(plan)
        if len(windows) != len(plan):
            raise ValueError(f"{len(windows)} windows given for {len(plan)} layers")
        self.windows = _effective_windows(windows, self.layer_grids)
        self.t_embedder = TimestepEmbedder(temb_dim)
        self.y_embedder = (LabelEmbedder(num_classes, temb_dim, class_dropout) if num_classes
                           else None)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            DiffiTResBlock(dim, temb_dim, heads, (g, g), w, mlp_ratio, norm_groups)
            for (_, dim, g), w in zip(plan, self.windows))
        self.downs = nn.ModuleList(nn.Conv2d(widths[lv], widths[lv + 1], 3, stride=2, padding=1)
                                   for lv in range(levels - 1))
        self.ups = nn.ModuleList(Upsample(widths[lv + 1], widths[lv]) for lv in range(levels - 1))
        self.skips = nn.ModuleList(nn.Conv2d(2 * widths[lv], widths[lv], 1)
                                   for lv in range(levels - 1))
        self.head = nn.Sequential(nn.GroupNorm(norm_groups, widths[0]), nn.SiLU(),
                                  nn.Conv2d(widths[0], self.out_channels, 3, padding=1))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        xavier_linears(self)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        temb = _conditioning(self.t_embedder, self.y_embedder, noise_cond, class_labels)
        levels = len(self.mults)
        layers = iter(self.blocks)
        h = self.stem(x)
        skips = []
        for lv in range(levels):
            for _ in range(self.level_blocks[lv]):
                h = next(layers)(h, temb)
            if lv < levels - 1:
                skips.append(h)
                h = self.downs[lv](h)
        for lv in reversed(range(levels - 1)):
            h = self.skips[lv](torch.cat([self.ups[lv](h), skips.pop()], dim=1))
            for _ in range(self.level_blocks[lv]):
                h = next(layers)(h, temb)
        return self.head(h)


class LatentFinalLayer(nn.Module):
    """LN -> SiLU -> Linear to patch * patch * out_channels (zero-initialised)."""

    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(self.norm_final(x)))


class LatentDiffiT(nn.Module):
    """Isotropic (latent-style) DiffiT: patchify, DiffiT blocks, linear decoder, unpatchify."""

    def __init__(self, image_size: int = 32, in_channels: int = 1, patch: int = 2,
                 width: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
                 num_classes: int = 0, class_dropout: float = 0.1, learn_sigma: bool = False,
                 windows: tuple[Window, ...] | None = None):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch {patch}")
        self.in_channels, self.patch = in_channels, patch
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.grid = (image_size // patch, image_size // patch)
        windows = tuple(windows) if windows else (0,) * depth
        if len(windows) != depth:
            raise ValueError(f"{len(windows)} windows given for {depth} layers")
        self.layer_grids = (self.grid,) * depth
        self.windows = _effective_windows(windows, self.layer_grids)
        self.x_embedder = PatchEmbed(patch, in_channels, width)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width, class_dropout) if num_classes else None
        self.pos_embed = nn.Parameter(sincos_2d(width, *self.grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiffiTBlock(width, width, heads, self.grid, w, mlp_ratio)
                                    for w in self.windows)
        self.final_layer = LatentFinalLayer(width, patch, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        xavier_linears(self)
        init_patch_projection(self.x_embedder.proj)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.grid, self.patch, self.out_channels)

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = _conditioning(self.t_embedder, self.y_embedder, noise_cond, class_labels)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x))


def layer_count(blocks: tuple[int, ...]) -> int:
    """Transformer layers of the image-space U: every encoder level's plus the decoder's."""
    return sum(blocks) + sum(blocks[:-1])


def build(cfg, kind: str, width: int, heads: int, **kwargs) -> nn.Module:
    """Zoo entry: kind "image" (U-shaped DiffiT; mults, blocks, norm_groups, partition: the
    side of every layer's non-overlapping windows, 0 = global, ...) or "latent" (isotropic;
    patch, depth, ...)."""
    from probe.models.zoo import parse_windows

    if kind == "image":
        blocks = tuple(kwargs.pop("blocks"))
        depth = layer_count(blocks)
        side = kwargs.pop("partition", 0)
        windows = parse_windows(cfg.windows, depth, (cfg.image_size, cfg.image_size),
                                default=Partition(side) if side else 0)
        return DiffiT(image_size=cfg.image_size, in_channels=cfg.channels, width=width,
                      heads=heads, blocks=blocks, num_classes=cfg.num_classes,
                      learn_sigma=cfg.learn_sigma, windows=windows, **kwargs)
    if kind == "latent":
        patch, depth = kwargs.pop("patch"), kwargs.pop("depth")
        if cfg.image_size % patch:
            raise ValueError(f"image size {cfg.image_size} is not divisible by patch {patch}")
        grid = (cfg.image_size // patch,) * 2
        return LatentDiffiT(image_size=cfg.image_size, in_channels=cfg.channels, patch=patch,
                            width=width, depth=depth, heads=heads, num_classes=cfg.num_classes,
                            learn_sigma=cfg.learn_sigma,
                            windows=parse_windows(cfg.windows, depth, grid), **kwargs)
    raise ValueError(f"unknown DiffiT kind {kind!r}")
