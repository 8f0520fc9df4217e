"""U-DiT (Tian et al., "U-DiTs: Downsample Tokens in U-Shaped Diffusion Transformers",
arXiv 2405.02730), written to match the released model and fixed where the release is broken.

What makes it a U-DiT:
- Token-downsampled self-attention (`DownsampledAttention`): a depthwise-conv shortcut
  (x + DWConv5x5(x)), then the level's token grid is split into its four 2x2 polyphase sub-grids;
  attention runs inside each sub-grid with one shared q/k/v projection, and the sub-grids are
  merged back to their positions (then a 1x1 output conv). The attention is cosine attention
  (Swin-v2): normalised q and k, times a learned per-head logit scale clamped at log(100), and
  2-D rotary position embedding on q and k in each sub-grid's own coordinates.
- A U shape of three levels at C, 2C, 4C channels (grids s, s/2, s/4): conv + pixel-unshuffle down,
  conv + pixel-shuffle up, concatenate-and-project skips. As in the released code the first
  decoder level runs at 2C (the upsampled C channels concatenated with the C-channel skip,
  projected 2C -> 2C), and each level has its own timestep (and label) embedder at its width.
- Every block is adaLN-Zero conditioned and holds two attention + feed-forward sub-layers
  (`attn1`/`mlp1`, `attn2`/`mlp2`), as in the release; `depth` counts these blocks per level
  (encoder 1, encoder 2, latent, decoder 2, decoder 1). A conv stem and a conv head; the
  feed-forward is 1x1 in -> GELU -> depthwise 5x5 -> 1x1 out.
- `rep=True` (the released presets) trains the feed-forward over-parameterised: two 1x1 convs in
  series for each projection and parallel depthwise 5x5 + 3x3 + 1x1 + identity branches. The
  release merges these branches into its own weights in place on every `.eval()`, so calling
  `.eval()` twice corrupts the model. Here every forward (train or eval) merges them out of place
  into temporaries where that is cheaper (see `FeedForward`), nothing is cached, and
  `FeedForward.fused()` builds a merged copy (`UDiT.merged()`: the whole model). Parameter
  counts here are the trained (rep) ones; the paper's 204M (U-DiT-B) and 810M (U-DiT-L) count
  the merged layers, which `rep=False` reproduces exactly. MACs in `probe models list` are the
  merged model's too (U-DiT-S at 32x32x4: 6.02 G merged, paper 6.04 G; the training forward runs
  6.83 G), so compute-matched comparisons with DiT are fair: see `probe.models.counts`.

Parameter names follow the released `udit_models.py` (x_embedder.proj, t_embedder_1,
encoder_level_1, attn1.to_qkv, attn1.logit_scale, mlp1.project_in, down1_2.body,
reduce_chan_level1, final_layer, ...) so released training-mode checkpoints map onto this module
by name; there is no label embedder when the model is unconditional.

Hook points (`<module path>` such as `encoder_level_1.0.attn1`):
- `.pattern`: the per-group probabilities, [batch, head, group, query, key] with
  L/4 queries and keys per group. Group g = 2*dy + dx holds the tokens at grid rows 2i + dy and
  columns 2j + dx; within a group, token n = i * (W/2) + j (row-major over the sub-grid).
- `.pattern_full`: the same probabilities in the level's full token coordinates, [batch, head,
  L, L] (positions row-major over the H x W grid), zero where query and key lie in different
  groups; every row sums to 1. Only materialised while the hook point is active. A hook that
  edits it feeds the edit back (entries between different groups are dropped).
- `.heads_out`: the attention output per head before the output conv, [batch, head, L, head_dim]
  in full-grid row-major order.

Backbone contract shared by the zoo: `forward(x, noise_cond, class_labels=None)`, x [B, C, H, W],
noise_cond [B], returns [B, C_out, H, W].
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from probe.models.attention import explicit_attention
from probe.models.dit import LabelEmbedder, TimestepEmbedder, init_patch_projection
from probe.models.hooks import HookPoint

LOGIT_SCALE_MAX = math.log(100.0)  # Swin-v2 clamp on the cosine-attention temperature
ROPE_THETA = 10000.0
LEVELS = ("encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1")


def rope_2d(head_dim: int, height: int, width: int, theta: float = ROPE_THETA
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [height*width, head_dim/2] of the released 2-D rotary embedding.

    Channels are rotated in consecutive pairs (2p, 2p+1). Pair p = 2m + a turns by x * f_m for
    a = 0 and by y * f_m for a = 1, with f_m = theta^(-4m / head_dim) and (y, x) the token's row
    and column (tokens row-major).
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary embedding needs a head width divisible by 4, got {head_dim}")
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    angles = torch.stack([xs.reshape(-1, 1) * freqs, ys.reshape(-1, 1) * freqs], dim=-1)
    angles = angles.reshape(height * width, head_dim // 2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [..., L, d] by the angles of `rope_2d` (in fp32 or
    wider)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    a, b = x.to(dtype).unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.to(dtype), sin.to(dtype)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def polyphase_positions(height: int, width: int) -> torch.Tensor:
    """Long [4, L/4]: row-major full-grid index of token n of group g = 2*dy + dx."""
    ys, xs = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([((2 * ys + dy) * width + 2 * xs + dx).flatten()
                        for dy in (0, 1) for dx in (0, 1)])


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class DepthwiseShortcut(nn.Module):
    """x + DWConv(x): the convolutional shortcut in front of the downsampled attention."""

    def __init__(self, dim: int, kernel: int = 5):
        super().__init__()
        self.layer = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(x)


class DownsampledAttention(nn.Module):
    """Cosine self-attention inside the four 2x2 polyphase sub-grids of a [B, C, H, W] map.

    `backend` is "sdpa" (fused kernel) or "explicit" (softmax materialised and passed through the
    hook points); the explicit path is taken whenever a hook point is active.
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], kernel: int = 5):
        super().__init__()
        height, width = grid
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if height % 2 or width % 2:
            raise ValueError(f"token downsampling needs an even token grid, got {height}x{width}")
        self.heads, self.grid, self.backend = heads, grid, "sdpa"
        head_dim = dim // heads
        self.downsampler = DepthwiseShortcut(dim, kernel)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        cos, sin = rope_2d(head_dim, height // 2, width // 2)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("positions", polyphase_positions(height, width), persistent=False)
        self.pattern = HookPoint()  # [B, head, group, L/4, L/4]
        self.pattern_full = HookPoint()  # [B, head, L, L], zero between groups
        self.heads_out = HookPoint()  # [B, head, L, head_dim], full grid row-major

    def logit_scales(self) -> torch.Tensor:
        """Per-head softmax temperature exp(min(logit_scale, log 100)), shape [heads]."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp().flatten()

    def to_full(self, probs: torch.Tensor) -> torch.Tensor:
        """[B, h, 4, n, n] per-group map -> [B, h, L, L] in full-grid coordinates (zeros between
        groups)."""
        b, h, _, n, _ = probs.shape
        pos = self.positions
        full = probs.new_zeros(b, h, 4 * n, 4 * n)
        full[:, :, pos[:, :, None], pos[:, None, :]] = probs
        return full

    def from_full(self, full: torch.Tensor) -> torch.Tensor:
        pos = self.positions
        return full[:, :, pos[:, :, None], pos[:, None, :]]

    def _hooked(self, probs: torch.Tensor) -> torch.Tensor:
        probs = self.pattern(probs)
        if self.pattern_full.active:
            probs = self.from_full(self.pattern_full(self.to_full(probs)))
        return probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        heads, head_dim = self.heads, c // self.heads
        gh, gw = height // 2, width // 2
        n = gh * gw
        x = self.downsampler(x)
        # [B, C, H, W] -> [B, group, n, C]: group = 2*dy + dx, n = i*gw + j at (2i+dy, 2j+dx).
        x = x.reshape(b, c, gh, 2, gw, 2).permute(0, 3, 5, 2, 4, 1).reshape(b, 4, n, c)
        qkv = self.to_qkv(x).reshape(b, 4, n, 3, heads, head_dim).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.unbind(0)  # [B, head, group, n, head_dim]
        q = apply_rope(q, self.rope_cos, self.rope_sin)
        k = apply_rope(k, self.rope_cos, self.rope_sin)
        scale = self.logit_scales().view(heads, 1, 1, 1)
        q = (F.normalize(q, dim=-1) * scale).to(v.dtype)
        k = F.normalize(k, dim=-1).to(v.dtype)
        if self.backend == "explicit" or self.pattern.active or self.pattern_full.active:
            out = explicit_attention(q, k, v, self._hooked, scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q.flatten(1, 2), k.flatten(1, 2),
                                                 v.flatten(1, 2), scale=1.0)
            out = out.reshape(b, heads, 4, n, head_dim)
        # Merge the groups back: [B, h, (dy dx), (i j), d] -> [B, h, (i dy j dx), d].
        out = out.reshape(b, heads, 2, 2, gh, gw, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = self.heads_out(out.reshape(b, heads, height * width, head_dim))
        out = out.transpose(2, 3).reshape(b, c, height, width)
        return self.to_out(out)


def series_weights(first: nn.Conv2d, second: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one 1x1 conv equal to two 1x1 convs in series."""
    w1, w2 = first.weight.flatten(1), second.weight.flatten(1)
    return (w2 @ w1)[:, :, None, None], w2 @ first.bias + second.bias


def project(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Apply a 1x1 projection: one conv, or two in series (rep) computed in the cheaper order.

    Merging costs out*mid*in MACs once per call; it pays when the map has more than
    in*mid*out / (mid*(in+out) - in*out) pixels (for U-DiT's in=C, mid=C, out=2C: 2C pixels),
    i.e. at the fine levels but not on the 8x8 latent grid of a large model at batch 1.
    Both orders compute the same function with the same gradients.
    """
    if isinstance(layer, nn.Conv2d):
        return layer(x)
    first, second = layer
    c_in, mid, c_out = first.in_channels, first.out_channels, second.out_channels
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    if pixels * c_in * c_out + c_out * mid * c_in < pixels * mid * (c_in + c_out):
        return F.conv2d(x, *series_weights(first, second))
    return second(first(x))


class FeedForward(nn.Module):
    """1x1 conv in -> GELU -> depthwise 5x5 conv -> 1x1 conv out (hidden = dim * ratio).

    With `rep` (the released presets) the layer is trained over-parameterised: each 1x1 projection
    is two 1x1 convs in series (through hidden/2), and the depthwise stage is
    DW5x5(x) + DW3x3(x) + DW1x1(x) + x. The forward merges the depthwise branches into one 5x5
    kernel, and each projection pair into one 1x1 conv where that is cheaper (`project`), out of
    place and differentiably, on every call: the same function and gradients (up to rounding) for
    every branch parameter as running the branches, in train and eval mode alike. Nothing is cached
    or written back.
    """

    def __init__(self, dim: int, ratio: float, rep: bool = True, hidden: int | None = None):
        super().__init__()
        self.rep = rep
        self.hidden = hidden = hidden or int(dim * ratio)
        if rep:
            if hidden % 2:
                raise ValueError(f"feed-forward width {hidden} must be even with rep=True")
            self.project_in = nn.Sequential(nn.Conv2d(dim, hidden // 2, 1),
                                            nn.Conv2d(hidden // 2, hidden, 1))
            self.dwconv = nn.ModuleList(nn.Conv2d(hidden, hidden, size, padding=size // 2,
                                                  groups=hidden) for size in (5, 3, 1))
            self.project_out = nn.Sequential(nn.Conv2d(hidden, hidden // 2, 1),
                                             nn.Conv2d(hidden // 2, dim, 1))
        else:
            self.project_in = nn.Conv2d(dim, hidden, 1)
            self.dwconv = nn.Conv2d(hidden, hidden, 5, padding=2, groups=hidden)
            self.project_out = nn.Conv2d(hidden, dim, 1)

    def merged_depthwise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the one depthwise 5x5 conv equal to DW5 + DW3 + DW1 + identity."""
        if not self.rep:
            return self.dwconv.weight, self.dwconv.bias
        dw5, dw3, dw1 = self.dwconv
        weight = dw5.weight + F.pad(dw3.weight, (1, 1, 1, 1)) + F.pad(dw1.weight + 1.0, (2,) * 4)
        return weight, dw5.bias + dw3.bias + dw1.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(project(x, self.project_in))
        x = F.conv2d(x, *self.merged_depthwise(), padding=2, groups=self.hidden)
        return project(x, self.project_out)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The rep layer run branch by branch (the reference form; slow on CPU)."""
        x = F.gelu(self.project_in(x))
        x = x + sum(conv(x) for conv in self.dwconv)
        return self.project_out(x)

    @torch.no_grad()
    def fused(self) -> FeedForward:
        """A new rep=False feed-forward computing the same function (self is left untouched)."""
        if not self.rep:
            return self
        dim, weight = self.project_in[0].in_channels, self.project_in[0].weight
        with torch.device(weight.device):  # built in place: no CPU initialisation to throw away
            out = FeedForward(dim, 0, rep=False, hidden=self.hidden).to(weight.dtype)
        for target, source in ((out.project_in, self.project_in),
                               (out.project_out, self.project_out)):
            weight, bias = series_weights(*source)
            target.weight.copy_(weight)
            target.bias.copy_(bias)
        weight, bias = self.merged_depthwise()
        out.dwconv.weight.copy_(weight)
        out.dwconv.bias.copy_(bias)
        return out


class UDiTBlock(nn.Module):
    """Two adaLN-Zero sub-layers of downsampled attention + depthwise-conv feed-forward."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], mlp_ratio: float = 2.0,
                 rep: bool = True, kernel: int = 5):
        super().__init__()
        for i in (1, 2):
            setattr(self, f"norm1{i}", LayerNorm2d(dim, elementwise_affine=False, eps=1e-6))
            setattr(self, f"attn{i}", DownsampledAttention(dim, heads, grid, kernel))
            setattr(self, f"norm2{i}", LayerNorm2d(dim, elementwise_affine=False, eps=1e-6))
            setattr(self, f"mlp{i}", FeedForward(dim, mlp_ratio, rep))
            setattr(self, f"adaLN_modulation{i}",
                    nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for i in (1, 2):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
                getattr(self, f"adaLN_modulation{i}")(c).chunk(6, dim=1)
            attn, mlp = getattr(self, f"attn{i}"), getattr(self, f"mlp{i}")
            norm_attn, norm_mlp = getattr(self, f"norm1{i}"), getattr(self, f"norm2{i}")
            x = x + gate_msa[:, :, None, None] * attn(modulate(norm_attn(x), shift_msa, scale_msa))
            x = x + gate_mlp[:, :, None, None] * mlp(modulate(norm_mlp(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a 3x3 conv to the output channels (both zero-initialised)."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = LayerNorm2d(dim, elementwise_affine=False, eps=1e-6)
        self.out_proj = nn.Conv2d(dim, out_channels, 3, padding=1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.out_proj(modulate(self.norm_final(x), shift, scale))


class PatchStem(nn.Module):
    """The conv stem (an overlapping 3x3 "patch embedding")."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv to C/2 channels, pixel-unshuffle: [B, C, H, W] -> [B, 2C, H/2, W/2]."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False),
                                  nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv to 2C channels, pixel-shuffle: [B, C, H, W] -> [B, C/2, 2H, 2W]."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False),
                                  nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UDiT(nn.Module):
    """U-DiT backbone. `depth` = blocks per level (encoder 1, encoder 2, latent, decoder 2,
    decoder 1); `width` = C; `heads` is the same at every level (head width grows with C)."""

    def __init__(self, image_size: int = 32, in_channels: int = 1, width: int = 96,
                 heads: int = 4, depth: tuple[int, ...] = (2, 5, 8, 5, 2),
                 mlp_ratio: float = 2.0, rep: bool = True, kernel: int = 5,
                 num_classes: int = 0, class_dropout: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        if len(depth) != 5:
            raise ValueError(f"U-DiT depth lists 5 levels, got {len(depth)}")
        if image_size % 8:
            raise ValueError(f"U-DiT needs an image size divisible by 8 (two 2x downsamplings, "
                             f"then 2x2 token groups), got {image_size}")
        if width % 2 or width % heads:
            raise ValueError(f"width {width} must be even and divisible by {heads} heads")
        if (width // heads) % 4:
            raise ValueError(f"head width {width // heads} must be divisible by 4 (2-D RoPE)")
        self.in_channels, self.depth = in_channels, tuple(depth)
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        s = image_size
        dims = {1: width, 2: 2 * width, 3: 4 * width}
        self.x_embedder = PatchStem(in_channels, width)
        for level, dim in dims.items():
            setattr(self, f"t_embedder_{level}", TimestepEmbedder(dim))
            setattr(self, f"y_embedder_{level}",
                    LabelEmbedder(num_classes, dim, class_dropout) if num_classes else None)
        self.num_classes = num_classes

        def level(n: int, dim: int, grid: int) -> nn.ModuleList:
            return nn.ModuleList(UDiTBlock(dim, heads, (grid, grid), mlp_ratio, rep, kernel)
                                 for _ in range(n))

        self.encoder_level_1 = level(depth[0], width, s)
        self.down1_2 = Downsample(width)
        self.encoder_level_2 = level(depth[1], 2 * width, s // 2)
        self.down2_3 = Downsample(2 * width)
        self.latent = level(depth[2], 4 * width, s // 4)
        self.up3_2 = Upsample(4 * width)
        self.reduce_chan_level2 = nn.Conv2d(4 * width, 2 * width, 1)
        self.decoder_level_2 = level(depth[3], 2 * width, s // 2)
        self.up2_1 = Upsample(2 * width)
        self.reduce_chan_level1 = nn.Conv2d(2 * width, 2 * width, 1)
        self.decoder_level_1 = level(depth[4], 2 * width, s)
        self.output = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.final_layer = FinalLayer(2 * width, self.out_channels)
        self.initialize_weights()

    def blocks(self) -> list[UDiTBlock]:
        return [block for name in LEVELS for block in getattr(self, name)]

    @torch.no_grad()
    def merged(self) -> UDiT:
        """A copy with every feed-forward merged (`FeedForward.fused`): the same function, in the
        published inference form (the paper's parameter and MAC counts). Self is left untouched."""
        out = copy.deepcopy(self)
        for block in out.blocks():
            for i in (1, 2):
                setattr(block, f"mlp{i}", getattr(block, f"mlp{i}").fused())
        return out

    def initialize_weights(self) -> None:
        def basic(module):
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        init_patch_projection(self.x_embedder.proj)
        for level in (1, 2, 3):
            t_embedder = getattr(self, f"t_embedder_{level}")
            nn.init.normal_(t_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(t_embedder.mlp[2].weight, std=0.02)
            y_embedder = getattr(self, f"y_embedder_{level}")
            if y_embedder is not None:
                nn.init.normal_(y_embedder.embedding_table.weight, std=0.02)
        for block in self.blocks():  # adaLN-Zero
            for i in (1, 2):
                nn.init.zeros_(getattr(block, f"adaLN_modulation{i}")[-1].weight)
                nn.init.zeros_(getattr(block, f"adaLN_modulation{i}")[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.out_proj.weight)
        nn.init.zeros_(self.final_layer.out_proj.bias)

    def condition(self, level: int, noise_cond: torch.Tensor,
                  class_labels: torch.Tensor | None) -> torch.Tensor:
        c = getattr(self, f"t_embedder_{level}")(noise_cond)
        y_embedder = getattr(self, f"y_embedder_{level}")
        if y_embedder is not None:
            if class_labels is None:  # unconditional use of a conditional model: the null class
                class_labels = torch.full((noise_cond.shape[0],), self.num_classes,
                                          device=noise_cond.device, dtype=torch.long)
            c = c + y_embedder(class_labels)
        return c

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        c1, c2, c3 = (self.condition(level, noise_cond, class_labels) for level in (1, 2, 3))
        enc1 = self.x_embedder(x)
        for block in self.encoder_level_1:
            enc1 = block(enc1, c1)
        enc2 = self.down1_2(enc1)
        for block in self.encoder_level_2:
            enc2 = block(enc2, c2)
        h = self.down2_3(enc2)
        for block in self.latent:
            h = block(h, c3)
        h = self.reduce_chan_level2(torch.cat([self.up3_2(h), enc2], dim=1))
        for block in self.decoder_level_2:
            h = block(h, c2)
        h = self.reduce_chan_level1(torch.cat([self.up2_1(h), enc1], dim=1))
        for block in self.decoder_level_1:
            h = block(h, c2)
        return self.final_layer(self.output(h), c2)


def build(cfg, width: int, heads: int, depth: tuple[int, ...], mlp_ratio: float = 2.0,
          rep: bool = True, kernel: int = 5) -> UDiT:
    """Zoo entry: a U-DiT for `cfg` (a ModelConfig) at one of the named sizes."""
    if cfg.windows:
        raise ValueError("U-DiT attention already runs in 2x2 token groups; local windows "
                         "are not supported")
    return UDiT(image_size=cfg.image_size, in_channels=cfg.channels, width=width, heads=heads,
                depth=tuple(depth), mlp_ratio=mlp_ratio, rep=rep, kernel=kernel,
                num_classes=cfg.num_classes, learn_sigma=cfg.learn_sigma)
