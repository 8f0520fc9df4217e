"""UNet backbones: diffusers' `UNet2DModel` with hooked attention, and the bias-free blind UNet.

Two families share this module (`build` dispatches on the preset's `kind`):

- `unet`: a diffusers `UNet2DModel` (the DDPM/ADM UNet: ResNet blocks with a time embedding,
  self-attention at chosen levels and in the middle block) wrapped to the zoo contract. Every
  diffusers `Attention` in it runs `HookedAttnProcessor`, which computes exactly what diffusers'
  default `AttnProcessor2_0` computes (group norm, 4-D reshape, residual, rescale) and exposes the
  softmax as a hook point. diffusers registers an `nn.Module` processor as the submodule
  `processor` of its `Attention`, so the hook points are named

      unet.<attention path>.processor.pattern     [batch, head, query, key]
      unet.<attention path>.processor.heads_out   [batch, head, query, head_dim]

  e.g. `unet.down_blocks.1.attentions.0.processor.pattern`,
  `unet.mid_block.attentions.0.processor.pattern`, `unet.up_blocks.2.attentions.1.processor...`.
  Queries and keys are the spatial positions of that level, row-major (L = h * w). Training uses
  fused SDPA; a processor switches to an explicit softmax while one of its hook points is active
  or when its `backend` is "explicit" (`probe.models.attention.set_backend`). Weights live under
  `unet.` with diffusers' own parameter names.

- `bf-unet`: the bias-free UNet of Kadkhodaie, Guth, Simoncelli & Mallat (ICLR 2024; their
  `code/network.py`, whose module layout and state-dict keys this one reproduces): 3 encoder
  blocks, a middle block, 3 decoder blocks, 3x3 convolutions without bias each followed by a
  bias-free batch norm (divide by the batch/running standard deviation, multiply by a learned
  gain: no mean subtraction, no shift) and a ReLU; 2x2 average pooling down, stride-2 transposed
  convolutions up, skips by concatenation. With no additive constant anywhere it is homogeneous of
  degree one in eval mode, f(a x) = a f(x) for a > 0. It ignores the noise level (a blind
  denoiser) and predicts the noise residual: use it with the Denoiser's `blind` objective.

Backbone contract (as `probe.models.dit.DiT`): `forward(x, noise_cond, class_labels=None)` with
x [B, C, H, W], noise_cond [B] (DDPM timestep, EDM ln(sigma)/4, or zeros), returns
[B, C * (2 if learn_sigma else 1), H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probe.models.attention import explicit_attention
from probe.models.hooks import HookPoint

# --------------------------------------------------------------------------------------------
# Hooked attention processor for diffusers' Attention
# --------------------------------------------------------------------------------------------


class HookedAttnProcessor(nn.Module):
    """diffusers attention processor with hook points and two backends that compute one function.

    Mirrors `diffusers.models.attention_processor.AttnProcessor2_0`: optional spatial norm, 4-D
    [B, C, H, W] input flattened to tokens, optional mask, group norm, q/k/v projections, optional
    q/k norms, attention, output projection and dropout, residual connection and division by
    `rescale_output_factor`. The `sdpa` path is that processor operation for operation (so its
    output is bitwise identical); the `explicit` path materialises softmax(q k^T * scale) and
    passes it through `pattern`.
    """

    def __init__(self, backend: str = "sdpa"):
        super().__init__()
        self.backend = backend
        self.pattern = HookPoint()  # [B, head, query, key]
        self.heads_out = HookPoint()  # [B, head, query, head_dim], before the output projection

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        # diffusers' Attention inspects this signature to decide which kwargs (temb) to pass on;
        # nn.Module.__call__'s own (*args, **kwargs) would make it drop them with a warning.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                *args, **kwargs)

    def forward(self, attn, hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length,
                                                         batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1,
                                                 attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # [B, heads, L, head_dim]
        if self.backend == "explicit" or self.pattern.active:
            hidden_states = self._explicit(attn, query, key, value, attention_mask)
        else:
            default_scale = attn.scale == head_dim**-0.5
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                **({} if default_scale else {"scale": attn.scale}))
        hidden_states = self.heads_out(hidden_states)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1,
                                                              attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height,
                                                                    width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _explicit(self, attn, query, key, value, attention_mask):
        dtype = query.dtype
        if dtype != torch.float32 and (attn.upcast_attention or attn.upcast_softmax):
            query, key, value = query.float(), key.float(), value.float()
        mask = bias = None
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                mask = attention_mask
            else:
                bias = attention_mask.to(query.dtype)
        out = explicit_attention(query, key, value, self.pattern, mask=mask, bias=bias,
                                 scale=attn.scale)
        return out.to(dtype)


def hook_attention(model: nn.Module, backend: str = "sdpa") -> int:
    """Give every diffusers `Attention` in `model` a new `HookedAttnProcessor`; returns how many."""
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    layers = [m for m in model.modules() if isinstance(m, DiffusersAttention)]
    for layer in layers:
        layer.set_processor(HookedAttnProcessor(backend))
    return len(layers)


# --------------------------------------------------------------------------------------------
# Family "unet": diffusers UNet2DModel
# --------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """diffusers `UNet2DModel` behind the zoo contract.

    Levels run from full resolution (level 0) down to image_size / 2^(levels-1); `attention`
    lists the levels whose down and up blocks carry self-attention (negative indices count from
    the lowest). The middle block always has attention. With `num_classes` > 0 the label
    embedding has one extra row, the null class (index `num_classes`) used for unconditional
    calls and, in training, for a `class_dropout` fraction of the labels (classifier-free
    guidance, as in the DiT).
    """

    def __init__(self, image_size: int = 32, in_channels: int = 1,
                 block_out_channels: tuple[int, ...] = (128, 256, 256, 256),
                 layers_per_block: int = 2, attention: tuple[int, ...] = (1,),
                 attention_head_dim: int = 64, norm_num_groups: int = 32, dropout: float = 0.0,
                 resnet_time_scale_shift: str = "scale_shift", num_classes: int = 0,
                 class_dropout: float = 0.1, learn_sigma: bool = False):
        super().__init__()
        from diffusers import UNet2DModel

        levels = len(block_out_channels)
        factor = 2 ** (levels - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(f"image size {image_size} is not divisible by {factor} "
                             f"({levels} levels, {levels - 1} downsamplings)")
        if in_channels < 1:
            raise ValueError(f"need at least one image channel, got {in_channels}")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by {norm_num_groups} norm groups")
        if any(not -levels <= a < levels for a in attention):
            raise ValueError(f"attention levels {attention} out of range for {levels} levels")
        levels_with_attention = sorted({a % levels for a in attention})
        attn_channels = [block_out_channels[i] for i in levels_with_attention]
        bad = [c for c in attn_channels + [block_out_channels[-1]] if c % attention_head_dim]
        if bad:
            raise ValueError(f"attention widths {bad} are not divisible by head dim "
                             f"{attention_head_dim}")
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.attention_levels = tuple(levels_with_attention)
        down = tuple("AttnDownBlock2D" if i in levels_with_attention else "DownBlock2D"
                     for i in range(levels))
        up = tuple("AttnUpBlock2D" if i in levels_with_attention else "UpBlock2D"
                   for i in reversed(range(levels)))
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=self.out_channels,
            down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            # diffusers drops the middle attention's group norm under scale_shift unless told:
            attn_norm_num_groups=norm_num_groups, dropout=dropout,
            resnet_time_scale_shift=resnet_time_scale_shift,
            num_class_embeds=num_classes + 1 if num_classes else None)
        hook_attention(self.unet)

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.num_classes:
            class_labels = None  # an unconditional model ignores labels (as the DiT does)
        elif class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, device=x.device,
                                      dtype=torch.long)
        elif self.training and self.class_dropout > 0:
            drop = torch.rand(class_labels.shape[0], device=x.device) < self.class_dropout
            class_labels = torch.where(drop, self.num_classes, class_labels)
        return self.unet(x, noise_cond, class_labels).sample


def build_unet(cfg, block_out_channels: tuple[int, ...], layers_per_block: int,
               attention: tuple[int, ...], attention_head_dim: int, norm_num_groups: int,
               dropout: float = 0.0, resnet_time_scale_shift: str = "scale_shift") -> UNet:
    if cfg.windows:
        raise ValueError("local attention windows are a DiT option; the UNet has none")
    return UNet(image_size=cfg.image_size, in_channels=cfg.channels,
                block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                attention=attention, attention_head_dim=attention_head_dim,
                norm_num_groups=norm_num_groups, dropout=dropout,
                resnet_time_scale_shift=resnet_time_scale_shift, num_classes=cfg.num_classes,
                learn_sigma=cfg.learn_sigma)


# --------------------------------------------------------------------------------------------
# Family "bf-unet": Kadkhodaie et al.'s bias-free blind UNet
# --------------------------------------------------------------------------------------------


class BiasFreeBatchNorm(nn.Module):
    """x / std * gain per channel: batch norm without the mean subtraction and without the shift.

    Training divides by the batch standard deviation (over batch and space, biased, + 1e-5 under
    the root) and updates `running_sd` with momentum 0.1; eval divides by `running_sd`. Gains start
    tiny as in the reference, N(0, (2/9/64)^2) clipped to +-0.025, so a fresh network outputs ~0.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_sd", torch.ones(1, channels, 1, 1))
        self.gammas = nn.Parameter((torch.randn(1, channels, 1, 1) * (2 / 9 / 64))
                                   .clamp_(-0.025, 0.025))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            sd = (x.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + self.eps).sqrt()
            with torch.no_grad():
                self.running_sd.lerp_(sd.to(self.running_sd.dtype), self.momentum)
        else:
            sd = self.running_sd
        return x / sd * self.gammas


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


class BiasFreeUNet(nn.Module):
    """The blind bias-free UNet; `width` channels at level 0, doubling per level.

    Module names follow the reference (`encoder.{b}`, `mid_block`, `upsample.{b}`, `decoder.{b}`,
    each block an `nn.Sequential` in the same order), so its checkpoints load after stripping
    DataParallel's `module.` prefix. The first encoder convolution has no norm (conv, ReLU), the
    last decoder convolution maps straight to the output channels.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, blocks: int = 3,
                 enc_convs: int = 2, mid_convs: int = 2, dec_convs: int = 2,
                 learn_sigma: bool = False):
        super().__init__()
        if enc_convs < 1 or mid_convs < 1 or dec_convs < 2 or blocks < 1:
            raise ValueError("bf-unet needs >= 1 block, >= 1 encoder and middle convolution and "
                             ">= 2 decoder convolutions per block")
        self.in_channels, self.blocks = in_channels, blocks
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

        def block(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(convs):
                layers += [_conv(c_in if i == 0 else c_out, c_out), BiasFreeBatchNorm(c_out),
                           nn.ReLU()]
            return layers

        self.encoder = nn.ModuleDict()
        for b in range(blocks):
            if b == 0:
                first = [_conv(in_channels, width), nn.ReLU()]
                self.encoder["0"] = nn.Sequential(*first, *block(width, width, enc_convs - 1))
            else:
                self.encoder[str(b)] = nn.Sequential(
                    *block(width * 2 ** (b - 1), width * 2**b, enc_convs))
        self.mid_block = nn.Sequential(*block(width * 2 ** (blocks - 1), width * 2**blocks,
                                              mid_convs))
        self.decoder = nn.ModuleDict()
        self.upsample = nn.ModuleDict()
        for b in reversed(range(blocks)):
            c = width * 2**b
            self.upsample[str(b)] = nn.ConvTranspose2d(2 * c, c, kernel_size=2, stride=2,
                                                       bias=False)
            if b == 0:
                self.decoder["0"] = nn.Sequential(*block(2 * c, c, dec_convs - 1),
                                                  _conv(c, self.out_channels))
            else:
                self.decoder[str(b)] = nn.Sequential(*block(2 * c, c, dec_convs))
        for m in self.modules():  # the reference's weights_init_kaiming
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Residual (noise) estimate; `noise_cond` and `class_labels` are ignored (blind)."""
        factor = 2**self.blocks
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"bf-unet needs image sides divisible by {factor}, "
                             f"got {tuple(x.shape[-2:])}")
        skips = []
        for b in range(self.blocks):
            skip = self.encoder[str(b)](x)
            skips.append(skip)
            x = self.pool(skip)
        x = self.mid_block(x)
        for b in reversed(range(self.blocks)):
            x = torch.cat([self.upsample[str(b)](x), skips[b]], dim=1)
            x = self.decoder[str(b)](x)
        return x


def build_bf_unet(cfg, width: int, blocks: int = 3, enc_convs: int = 2, mid_convs: int = 2,
                  dec_convs: int = 2) -> BiasFreeUNet:
    factor = 2**blocks
    if cfg.image_size < factor or cfg.image_size % factor:
        raise ValueError(f"image size {cfg.image_size} is not divisible by {factor} "
                         f"({blocks} poolings)")
    if cfg.num_classes:
        raise ValueError("bf-unet is an unconditional blind denoiser (num_classes must be 0)")
    if cfg.windows:
        raise ValueError("local attention windows are a DiT option; bf-unet has no attention")
    return BiasFreeUNet(in_channels=cfg.channels, width=width, blocks=blocks,
                        enc_convs=enc_convs, mid_convs=mid_convs, dec_convs=dec_convs,
                        learn_sigma=cfg.learn_sigma)


def build(cfg, kind: str = "unet", **kwargs) -> nn.Module:
    """Zoo entry for both families: `kind` ("unet" | "bf-unet") comes from the preset."""
    if kind == "unet":
        return build_unet(cfg, **kwargs)
    if kind == "bf-unet":
        return build_bf_unet(cfg, **kwargs)
    raise ValueError(f"unknown UNet kind {kind!r}")
