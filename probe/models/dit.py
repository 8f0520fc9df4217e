"""Diffusion Transformer (Peebles & Xie, arXiv 2212.09748), written to match the reference.

What makes it a DiT and not just a ViT: adaLN-Zero blocks (every block's shift/scale/gate and the
final layer are zero-initialised, so a fresh model outputs exactly zero), a fixed 2-D sin-cos
position embedding, one timestep and one label embedder shared by all blocks, xavier-uniform
linears. Added for this toolkit: a per-layer local attention window (0 = global; a sliding
window or non-overlapping partitions, see probe.models.attention) and hook points
(`blocks.{i}.attn.pattern` [B, head, query, key]; `blocks.{i}.attn.heads_out`
[B, head, token, head_dim]).

Backbone contract shared by the zoo: `forward(x, noise_cond, class_labels=None)`, x [B, C, H, W],
noise_cond [B] (a DDPM timestep, EDM c_noise, ...), returns [B, C_out, H, W].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from probe.models.attention import Attention, Window


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [height*width, dim] (MAE/DiT convention)."""
    if dim % 4:
        raise ValueError("embedding width must be divisible by 4")
    if torch.get_default_device().type == "meta":  # shapes only (zoo.build(device="meta")):
        return torch.empty(height * width, dim)  # a 4096 px grid's table would take minutes

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    emb = np.concatenate([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], axis=1)
    return torch.from_numpy(emb).float()


def unpatchify(x: torch.Tensor, grid: tuple[int, int], patch: int, channels: int
               ) -> torch.Tensor:
    """Tokens [B, L, p*p*C] on a `grid` of patches -> image [B, C, H, W]."""
    h, w = grid
    x = x.reshape(x.shape[0], h, w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, h * patch, w * patch)


def init_patch_projection(proj: nn.Conv2d) -> None:
    """The reference's patch-embedding init: xavier-uniform as if the conv were a linear layer
    on flattened patches, zero bias."""
    w = proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(proj.bias)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar noise condition -> sinusoidal features -> MLP (the DiT/ADM embedder)."""

    def __init__(self, width: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # features are float32; cast so a float64 model (finite-difference checks) runs too
        return self.mlp(self.features(t, self.frequencies).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> embeddings, with label dropout to a null class for classifier-free
    guidance (the null class is index `num_classes`)."""

    def __init__(self, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + (dropout > 0), width)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, grid: tuple[int, int], window: Window = 0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, grid, window=window)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DiT(nn.Module):
    """DiT backbone. `windows[i]` is layer i's attention window: a side in tokens (0 = global
    attention) or a `Partition` (see probe.models.attention)."""

    def __init__(self, image_size: int = 32, in_channels: int = 1, patch: int = 2,
                 width: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
                 num_classes: int = 0, class_dropout: float = 0.1, learn_sigma: bool = False,
                 windows: tuple[Window, ...] | None = None):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch {patch}")
        windows = tuple(windows) if windows else (0,) * depth
        if len(windows) != depth:
            raise ValueError(f"{len(windows)} windows given for {depth} layers")
        self.in_channels, self.patch = in_channels, patch
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.grid = (image_size // patch, image_size // patch)
        self.windows = windows
        self.x_embedder = PatchEmbed(patch, in_channels, width)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width, class_dropout) if num_classes else None
        # A frozen parameter, as in the reference: counted in the published parameter totals.
        self.pos_embed = nn.Parameter(sincos_2d(width, *self.grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, self.grid, w, mlp_ratio)
                                    for w in windows)
        self.final_layer = FinalLayer(width, patch, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        init_patch_projection(self.x_embedder.proj)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.grid, self.patch, self.out_channels)

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(noise_cond)
        if self.y_embedder is not None:
            if class_labels is None:  # unconditional use of a conditional model: the null class
                class_labels = torch.full((x.shape[0],), self.y_embedder.num_classes,
                                          device=x.device, dtype=torch.long)
            c = c + self.y_embedder(class_labels)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


def build(cfg, depth: int, width: int, heads: int, patch: int) -> DiT:
    """Zoo entry: a DiT for `cfg` (a ModelConfig) at one of the named sizes."""
    from probe.models.zoo import parse_windows

    if cfg.image_size % patch:
        raise ValueError(f"image size {cfg.image_size} is not divisible by patch {patch}")
    grid = (cfg.image_size // patch,) * 2
    return DiT(image_size=cfg.image_size, in_channels=cfg.channels, patch=patch, width=width,
               depth=depth, heads=heads, num_classes=cfg.num_classes,
               learn_sigma=cfg.learn_sigma, windows=parse_windows(cfg.windows, depth, grid))
