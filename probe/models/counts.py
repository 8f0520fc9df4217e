"""Parameters and MACs of every zoo family, counted from the architecture alone (no torch).

`probe models list` needs both figures for 34 presets up to DiT-XL. Building the models to count
them took 49 s on a 2-core machine (87 s with torch's FLOP counter); shapes on the meta device
still took ~13 s (importing torch and diffusers alone takes 3.5-4.5 s). A JSON cache keyed by
code version would answer warm calls fast, but it would miss its first call and every call after
a model edit or a dependency upgrade, and a listing command would write to a cache directory. So
each family is described here layer by layer in plain arithmetic, which answers in microseconds,
and tests pin the arithmetic to what it describes: for every preset, `count` equals the parameter
count of the built model and torch's FlopCounterMode on its forward (small presets for real at
two sizes, every preset on the meta device). A change to a model that these formulas do not
follow fails those tests instead of printing a wrong figure.

What is counted (FlopCounterMode's convention, halved: one multiply-accumulate = 2 FLOPs):
- every matmul-like op: linear layers, convolutions (k*k*C_in/groups*C_out per output pixel;
  a transposed conv per input pixel), and both attention products (q k^T and P v:
  2 * queries * keys * width), at batch 1, including the conditioning MLPs;
- attention as training and sampling run it: a layer that attends within p x p partitions
  (DiffiT's image presets) costs 2 * L * p^2 * width (its padded partitions when p does not
  divide the grid), not the full grid that the explicit probing path materialises;
- nothing elementwise: norms, activations, modulation, softmax, RoPE, biases and embedding
  look-ups cost 0. (Counters that charge elementwise multiplies, such as torchprofile, read
  0.2-0.4 % higher on U-DiT.)
- U-DiT is counted in its merged form (`UDiT.merged()`, rep=False), the form the paper reports
  and deploys; its parameters are the trained (rep) ones, which checkpoints hold. Merged
  U-DiT-S at its paper setting (ImageNet 256, a 32x32x4 latent, 1000 classes, learned sigma):
  6.021 G MACs against the paper's 6.04 G (-0.3 %); the over-parameterised training forward runs
  6.83 G. torchprofile, the counter of the U-DiT release, gives 6.047 G on the same merged model:
  the same 6.021 G of matmuls plus 26 M elementwise multiplies.

`cfg.windows` is not read: the figures are the presets' own layouts (global attention, or the
partitions a DiffiT image preset names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FREQUENCIES = 256  # sinusoidal features in front of every timestep MLP (DiT/ADM)


@dataclass(frozen=True)
class Counts:
    params: int  # parameters of the model as built (U-DiT: the trained, over-parameterised form)
    macs: int  # multiply-accumulates of one forward pass on one image (U-DiT: merged)


class Tally:
    """Running totals; each method adds one layer's parameters and its MACs on `pixels` inputs."""

    def __init__(self) -> None:
        self.params = self.macs = 0

    def weights(self, n: int) -> None:
        """Parameters that cost no MACs (norm affines, embedding and bias tables, gains)."""
        self.params += n

    def linear(self, c_in: int, c_out: int, tokens: int = 1, bias: bool = True) -> None:
        self.params += c_in * c_out + (c_out if bias else 0)
        self.macs += tokens * c_in * c_out

    def conv(self, c_in: int, c_out: int, pixels: int, kernel: int = 1, groups: int = 1,
             bias: bool = True) -> None:
        weights = c_out * (c_in // groups) * kernel * kernel
        self.params += weights + (c_out if bias else 0)
        self.macs += pixels * weights

    def attention(self, queries: int, keys: int, width: int, groups: int = 1) -> None:
        """softmax(q k^T) v over all heads (heads * head_dim = width) in each of `groups`."""
        self.macs += 2 * groups * queries * keys * width

    def timestep(self, width: int) -> None:
        """TimestepEmbedder: sinusoidal features -> Linear -> SiLU -> Linear."""
        self.linear(FREQUENCIES, width)
        self.linear(width, width)

    def labels(self, cfg, width: int) -> None:
        """LabelEmbedder with label dropout: one extra row, the null class."""
        if cfg.num_classes:
            self.weights((cfg.num_classes + 1) * width)

    def mlp(self, width: int, hidden: int, tokens: int) -> None:
        self.linear(width, hidden, tokens)
        self.linear(hidden, width, tokens)

    def counts(self) -> Counts:
        return Counts(self.params, self.macs)


def _out_channels(cfg) -> int:
    return cfg.channels * (2 if cfg.learn_sigma else 1)


def _check_divisible(size: int, factor: int, why: str) -> None:
    if size < factor or size % factor:
        raise ValueError(f"image size {size} is not divisible by {factor} ({why})")


# ------------------------------------------------------------------------------------ DiT


def dit(cfg, depth: int, width: int, heads: int, patch: int, mlp_ratio: float = 4.0) -> Counts:
    """`probe.models.dit.DiT`: adaLN-Zero blocks; per block 6W^2 + 12 L W^2 + 2 L^2 W MACs."""
    _check_divisible(cfg.image_size, patch, f"patch {patch}")
    tokens = (cfg.image_size // patch) ** 2
    t = Tally()
    t.conv(cfg.channels, width, tokens, kernel=patch)  # patch embedding
    t.weights(tokens * width)  # the frozen sin-cos positions are a parameter, as in the reference
    t.timestep(width)
    t.labels(cfg, width)
    for _ in range(depth):
        t.linear(width, 6 * width)  # adaLN modulation
        t.linear(width, 3 * width, tokens)
        t.attention(tokens, tokens, width)
        t.linear(width, width, tokens)
        t.mlp(width, int(width * mlp_ratio), tokens)
    t.linear(width, 2 * width)  # final adaLN
    t.linear(width, patch * patch * _out_channels(cfg), tokens)
    return t.counts()


# ---------------------------------------------------------------------- UNet and bf-UNet


def unet(cfg, kind: str = "unet", **kwargs) -> Counts:
    if kind == "unet":
        return _unet2d(cfg, **kwargs)
    if kind == "bf-unet":
        return _bias_free_unet(cfg, **kwargs)
    raise ValueError(f"unknown UNet kind {kind!r}")


def _unet2d(cfg, block_out_channels: tuple[int, ...], layers_per_block: int,
            attention: tuple[int, ...], attention_head_dim: int, norm_num_groups: int,
            dropout: float = 0.0, resnet_time_scale_shift: str = "scale_shift") -> Counts:
    """diffusers `UNet2DModel` as `probe.models.unet.UNet` configures it (channel bookkeeping as
    in diffusers' `__init__`: each up block's ResNets take the previous output plus one skip)."""
    chans, levels, size = tuple(block_out_channels), len(block_out_channels), cfg.image_size
    _check_divisible(size, 2 ** (levels - 1), f"{levels} levels, {levels - 1} downsamplings")
    with_attention = {a % levels for a in attention}
    temb = 4 * chans[0]
    t = Tally()

    def resnet(c_in: int, c_out: int, pixels: int) -> None:  # ResnetBlock2D
        t.weights(2 * c_in)  # group norm
        t.conv(c_in, c_out, pixels, 3)
        t.linear(temb, c_out * (2 if resnet_time_scale_shift == "scale_shift" else 1))
        t.weights(2 * c_out)
        t.conv(c_out, c_out, pixels, 3)
        if c_in != c_out:
            t.conv(c_in, c_out, pixels)  # 1x1 shortcut

    def attend(width: int, pixels: int) -> None:  # diffusers Attention with group norm
        t.weights(2 * width)
        for _ in range(3):  # q, k, v
            t.linear(width, width, pixels)
        t.attention(pixels, pixels, width)
        t.linear(width, width, pixels)

    t.conv(cfg.channels, chans[0], size * size, 3)
    t.linear(chans[0], temb)  # time embedding (diffusers' Timesteps has no weights)
    t.linear(temb, temb)
    t.labels(cfg, temb)
    for level in range(levels):
        side = size >> level
        for j in range(layers_per_block):
            resnet(chans[max(level - 1, 0)] if j == 0 else chans[level], chans[level], side**2)
            if level in with_attention:
                attend(chans[level], side**2)
        if level < levels - 1:
            t.conv(chans[level], chans[level], (side // 2) ** 2, 3)  # stride-2 conv
    bottom = (size >> (levels - 1)) ** 2
    resnet(chans[-1], chans[-1], bottom)
    attend(chans[-1], bottom)
    resnet(chans[-1], chans[-1], bottom)
    reverse = chans[::-1]
    out = reverse[0]
    for i in range(levels):
        previous, out, skip_in = out, reverse[i], reverse[min(i + 1, levels - 1)]
        level, side = levels - 1 - i, size >> (levels - 1 - i)
        for j in range(layers_per_block + 1):
            skip = skip_in if j == layers_per_block else out
            resnet((previous if j == 0 else out) + skip, out, side**2)
            if level in with_attention:
                attend(out, side**2)
        if level > 0:
            t.conv(out, out, (2 * side) ** 2, 3)  # nearest 2x, then a 3x3 conv
    t.weights(2 * chans[0])
    t.conv(chans[0], _out_channels(cfg), size * size, 3)
    return t.counts()


def _bias_free_unet(cfg, width: int, blocks: int = 3, enc_convs: int = 2, mid_convs: int = 2,
                    dec_convs: int = 2) -> Counts:
    """`probe.models.unet.BiasFreeUNet`: bias-free 3x3 convs, each but the first and the last
    followed by a batch norm with one gain per channel."""
    size = cfg.image_size
    _check_divisible(size, 2**blocks, f"{blocks} poolings")
    if cfg.num_classes:
        raise ValueError("bf-unet is an unconditional blind denoiser (num_classes must be 0)")
    t = Tally()

    def block(c_in: int, c_out: int, convs: int, pixels: int) -> None:
        for i in range(convs):
            t.conv(c_in if i == 0 else c_out, c_out, pixels, 3, bias=False)
            t.weights(c_out)  # bias-free batch-norm gains

    for b in range(blocks):
        pixels = (size >> b) ** 2
        if b == 0:
            t.conv(cfg.channels, width, pixels, 3, bias=False)
            block(width, width, enc_convs - 1, pixels)
        else:
            block(width * 2 ** (b - 1), width * 2**b, enc_convs, pixels)
    block(width * 2 ** (blocks - 1), width * 2**blocks, mid_convs, (size >> blocks) ** 2)
    for b in reversed(range(blocks)):
        c, pixels = width * 2**b, (size >> b) ** 2
        t.conv(2 * c, c, (size >> (b + 1)) ** 2, 2, bias=False)  # 2x2 stride-2 transposed conv
        if b == 0:
            block(2 * c, c, dec_convs - 1, pixels)
            t.conv(c, _out_channels(cfg), pixels, 3, bias=False)
        else:
            block(2 * c, c, dec_convs, pixels)
    return t.counts()


# ---------------------------------------------------------------------------------- U-DiT


def udit(cfg, width: int, heads: int, depth: tuple[int, ...], mlp_ratio: float = 2.0,
         rep: bool = True, kernel: int = 5) -> Counts:
    """`probe.models.udit.UDiT`: parameters as built (rep or not), MACs of the merged model.

    Per sub-layer at width d on L = g^2 tokens: adaLN 6d^2; depthwise k x k shortcut L k^2 d;
    qkv 3 L d^2; attention inside the four 2x2 polyphase groups 2 * 4 (L/4)^2 d = L^2 d / 2;
    1x1 output L d^2; merged feed-forward (hidden h = 2d) L (2 d h + 25 h).
    """
    size = cfg.image_size
    _check_divisible(size, 8, "two 2x downsamplings, then 2x2 token groups")
    c = width
    t = Tally()

    def feed_forward(d: int, pixels: int) -> None:
        h = int(d * mlp_ratio)
        t.macs += pixels * (d * h + 25 * h + h * d)  # 1x1 in, merged depthwise 5x5, 1x1 out
        if rep:  # two 1x1 convs per projection, depthwise 5x5 + 3x3 + 1x1 (+ identity)
            t.weights(d * h // 2 + h // 2 + h // 2 * h + h)
            t.weights((25 + 1) * h + (9 + 1) * h + (1 + 1) * h)
            t.weights(h * h // 2 + h // 2 + h // 2 * d + d)
        else:
            t.weights(d * h + h + (25 + 1) * h + h * d + d)

    def level(blocks: int, d: int, side: int) -> None:
        pixels = side * side
        for _ in range(2 * blocks):  # two attention + feed-forward sub-layers per block
            t.linear(d, 6 * d)  # adaLN modulation
            t.conv(d, d, pixels, kernel, groups=d)  # depthwise shortcut
            t.linear(d, 3 * d, pixels)
            t.weights(heads)  # logit scales
            t.attention(pixels // 4, pixels // 4, d, groups=4)
            t.conv(d, d, pixels)  # 1x1 output
            feed_forward(d, pixels)

    t.conv(cfg.channels, c, size * size, 3)  # conv stem
    for d in (c, 2 * c, 4 * c):  # one timestep (and label) embedder per width
        t.timestep(d)
        t.labels(cfg, d)
    level(depth[0], c, size)
    t.conv(c, c // 2, size * size, 3, bias=False)  # then pixel-unshuffle
    level(depth[1], 2 * c, size // 2)
    t.conv(2 * c, c, (size // 2) ** 2, 3, bias=False)
    level(depth[2], 4 * c, size // 4)
    t.conv(4 * c, 8 * c, (size // 4) ** 2, 3, bias=False)  # then pixel-shuffle
    t.conv(4 * c, 2 * c, (size // 2) ** 2)  # skip concatenation -> 2C
    level(depth[3], 2 * c, size // 2)
    t.conv(2 * c, 4 * c, (size // 2) ** 2, 3, bias=False)
    t.conv(2 * c, 2 * c, size * size)
    level(depth[4], 2 * c, size)
    t.conv(2 * c, 2 * c, size * size, 3)  # output conv
    t.linear(2 * c, 4 * c)  # final adaLN
    t.conv(2 * c, _out_channels(cfg), size * size, 3)
    return t.counts()


# --------------------------------------------------------------------------------- DiffiT


def diffit(cfg, kind: str, width: int, heads: int, **kwargs) -> Counts:
    if kind == "image":
        return _diffit_image(cfg, width, heads, **kwargs)
    if kind == "latent":
        return _diffit_latent(cfg, width, heads, **kwargs)
    raise ValueError(f"unknown DiffiT kind {kind!r}")


def _tmsa_block(t: Tally, d: int, temb: int, heads: int, side: int, mlp_ratio: float,
                partition: int = 0) -> None:
    """DiffiTBlock: TMSA (qkv from the tokens and from the time token, a relative position bias
    table of (2e-1)^2 entries per head, e = the grid's side or the partition's) then the MLP; its
    layer norms have no weights. A partition as wide as the grid is global attention."""
    tokens = side * side
    t.linear(d, 3 * d, tokens)
    t.linear(temb, 3 * d)
    if partition and partition < side:
        cells = math.ceil(side / partition) ** 2  # the grid padded to whole partitions
        t.weights((2 * partition - 1) ** 2 * heads)
        t.attention(partition**2, partition**2, d, groups=cells)
    else:
        t.weights((2 * side - 1) ** 2 * heads)
        t.attention(tokens, tokens, d)
    t.linear(d, d, tokens)
    t.mlp(d, int(d * mlp_ratio), tokens)


def _diffit_image(cfg, width: int, heads: int, mults: tuple[int, ...], blocks: tuple[int, ...],
                  mlp_ratio: float = 4.0, temb_mult: int = 4, norm_groups: int = 32,
                  partition: int = 0) -> Counts:
    levels, size = len(mults), cfg.image_size
    _check_divisible(size, 2 ** (levels - 1), f"{levels} levels")
    widths = [width * m for m in mults]
    temb = width * temb_mult
    t = Tally()

    def resblock(lv: int) -> None:  # GN -> Swish -> Conv3x3, then a DiffiT block
        d, side = widths[lv], size >> lv
        t.weights(2 * d)
        t.conv(d, d, side * side, 3)
        _tmsa_block(t, d, temb, heads, side, mlp_ratio, partition)

    t.timestep(temb)
    t.labels(cfg, temb)
    t.conv(cfg.channels, widths[0], size * size, 3)  # stem
    for lv in range(levels):
        for _ in range(blocks[lv]):
            resblock(lv)
        if lv < levels - 1:
            t.conv(widths[lv], widths[lv + 1], (size >> (lv + 1)) ** 2, 3)  # stride-2 conv
    for lv in reversed(range(levels - 1)):
        pixels = (size >> lv) ** 2
        t.conv(widths[lv + 1], widths[lv], pixels, 3)  # nearest 2x, then a 3x3 conv
        t.conv(2 * widths[lv], widths[lv], pixels)  # skip projection
        for _ in range(blocks[lv]):
            resblock(lv)
    t.weights(2 * widths[0])  # head group norm
    t.conv(widths[0], _out_channels(cfg), size * size, 3)
    return t.counts()


def _diffit_latent(cfg, width: int, heads: int, patch: int, depth: int,
                   mlp_ratio: float = 4.0) -> Counts:
    _check_divisible(cfg.image_size, patch, f"patch {patch}")
    side = cfg.image_size // patch
    t = Tally()
    t.conv(cfg.channels, width, side * side, kernel=patch)
    t.weights(side * side * width)  # frozen sin-cos positions
    t.timestep(width)
    t.labels(cfg, width)
    for _ in range(depth):
        _tmsa_block(t, width, width, heads, side, mlp_ratio)
    t.linear(width, patch * patch * _out_channels(cfg), side * side)
    return t.counts()


FAMILIES = {"dit": dit, "unet": unet, "bf-unet": unet, "udit": udit, "diffit": diffit}
