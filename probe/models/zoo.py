"""Registry of named model presets: `build(ModelConfig)` -> backbone.

A preset is a family (dit, unet, bf-unet, udit, diffit) plus its size arguments. A name a paper
uses means what that paper says (its source is cited next to it); names of our own CPU-sized
models (`dit-tiny`, `*-xs` outside the DiT family) cannot be confused with a paper's. DiT names
are `dit-{tiny,xs,s,b,l,xl}/{1,2,4,8}` (the number is the patch size). Each family module
exposes `build(cfg, **kwargs)`; it is imported only when a preset of that family is built, and
this module imports torch only inside the functions that need it, so listing presets (`count`:
parameters and MACs from `probe.models.counts`, no model built) needs neither.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from probe.config import ModelConfig, RunConfig
from probe.errors import ProbeError

if TYPE_CHECKING:
    from torch import nn

    from probe.models.attention import Window
    from probe.models.counts import Counts


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""


FAMILIES = {  # family -> module with build(cfg, **kwargs)
    "dit": "probe.models.dit",
    "unet": "probe.models.unet", "bf-unet": "probe.models.unet",  # build() dispatches on `kind`
}
PRESETS: dict[str, Preset] = {}


def register(name: str, family: str, description: str = "", **kwargs) -> None:
    PRESETS[name] = Preset(name, family, kwargs, description)


# DiT sizes: (depth, width, heads, source).
# - S/B/L/XL: Peebles & Xie (2212.09748), Table 1.
# - XS: An et al. (2410.21273), the pixel-space DiT-XS/1 of their experiments: width 252 with 4
#   heads (their project page). Depth 12 is our reading, not a quoted number: it is DiT-S's depth,
#   their S/1 is DiT-S at patch 1, and their window placements "head" (first six layers) and
#   "tail" (last six) then split the model into halves.
# - tiny: ours, a CPU-sized model for laptops, tests and the demo.
DIT_SIZES = {
    "tiny": (4, 128, 4, "ours, CPU-sized"),
    "xs": (12, 252, 4, "An et al. 2410.21273; depth 12 assumed"),
    "s": (12, 384, 6, "Peebles & Xie 2212.09748"),
    "b": (12, 768, 12, "Peebles & Xie 2212.09748"),
    "l": (24, 1024, 16, "Peebles & Xie 2212.09748"),
    "xl": (28, 1152, 16, "Peebles & Xie 2212.09748"),
}
for _size, (_depth, _width, _heads, _source) in DIT_SIZES.items():
    _label = "tiny" if _size == "tiny" else _size.upper()
    for _patch in (1, 2, 4, 8):
        register(f"dit-{_size}/{_patch}", "dit",
                 f"DiT-{_label}/{_patch}: depth {_depth}, width {_width}, heads {_heads} "
                 f"({_source})",
                 depth=_depth, width=_width, heads=_heads, patch=_patch)

# UNets (diffusers UNet2DModel). `attention` lists the levels with self-attention (level 0 = full
# resolution, -1 = the lowest); the middle block always has it. unet-idm follows improved-diffusion
# at 32x32: 128 channels x (1, 2, 2, 2), 2 res blocks per level, 4 heads, scale-shift norm.
register("unet-idm", "unet", "improved-diffusion-like UNet: channels (128, 256, 256, 256), "
         "2 blocks/level, attention at level 1 (16x16 at 32x32) and in the middle",
         kind="unet", block_out_channels=(128, 256, 256, 256), layers_per_block=2,
         attention=(1,), attention_head_dim=64, norm_num_groups=32)
register("unet-s", "unet", "small UNet for CPU: channels (64, 128, 128), 2 blocks/level, "
         "attention at the lowest level and in the middle",
         kind="unet", block_out_channels=(64, 128, 128), layers_per_block=2, attention=(-1,),
         attention_head_dim=32, norm_num_groups=16)
register("unet-xs", "unet", "tiny UNet for CPU and tests: channels (32, 64, 64), 1 block/level, "
         "attention at the lowest level and in the middle",
         kind="unet", block_out_channels=(32, 64, 64), layers_per_block=1, attention=(-1,),
         attention_head_dim=32, norm_num_groups=8)
# Bias-free blind UNet of Kadkhodaie et al. (ICLR 2024, 2310.02557): use with objective "blind".
# Their Table 1 grows the network with the image: one more pooling level per doubling, 64
# channels at full resolution, 2 convs per block. Blocks per resolution follow their release
# (code/model_loader_func.py: RF_blocks = {18: 1, 45: 2, 90: 3, 180: 4}); our counts are the
# release's, which the paper rounds loosely (366k printed as 360k, 7.66M as 7.6M). The receptive
# fields come out exactly as printed (tests/test_unet.py measures them).
BF_UNET_SIZES = {  # image side: (blocks, parameters and receptive field in their Table 1)
    20: (1, "360k", 18), 40: (2, "1.8M", 44), 80: (3, "7.6M", 92), 160: (4, "31M", 188)}
for _side, (_blocks, _params, _rf) in BF_UNET_SIZES.items():
    register(f"bf-unet-{_side}", "bf-unet",
             f"bias-free blind UNet for {_side}x{_side} images (Kadkhodaie et al. Table 1): "
             f"{_blocks} pooling{'s' if _blocks > 1 else ''}, {_params} parameters, "
             f"receptive field {_rf}",
             kind="bf-unet", width=64, blocks=_blocks)
register("bf-unet", "bf-unet", "bias-free blind UNet (Kadkhodaie et al.): 3 levels, channels "
         "64/128/256, middle 512, 2 convs per block (= bf-unet-80)", kind="bf-unet", width=64)
register("bf-unet-xs", "bf-unet", "bias-free blind UNet, 16 base channels (CPU and tests)",
         kind="bf-unet", width=16)


def preset(arch: str) -> Preset:
    try:
        return PRESETS[arch]
    except KeyError:
        raise ProbeError(f"unknown arch {arch!r}; `probe models list` shows the presets") from None


def parse_windows(specs: tuple[str, ...] | list[str], depth: int, grid: tuple[int, int],
                  default: Window = 0) -> tuple[Window, ...]:
    """["0-3:5", "7:p4"] -> per-layer windows. Validates against the model's depth and grid.

    LAYERS:SIZE is a sliding SIZE x SIZE window centred on each query (SIZE odd), LAYERS:pSIZE
    non-overlapping SIZE x SIZE partitions, LAYERS:global plain attention; `default` is what the
    layers no spec names get (a preset's own layout). A spec may also name a window preset
    (`probe.models.windows`, e.g. "an-default"), which expands into per-layer specs first.
    """
    from probe.models.windows import expand

    windows = [default] * depth
    for spec, origin in expand(specs, depth):
        name = repr(spec) if spec == origin else f"{spec!r} (from {origin.strip()})"
        match = re.fullmatch(r"\s*(all|\d+)(?:-(\d+))?\s*:\s*(\d+|p\d+|global)\s*", spec)
        if not match:
            raise ProbeError(f"bad window {name}: expected LAYERS:SIZE such as 0-3:5 or all:7, "
                             "LAYERS:pSIZE (partitions), or a preset name "
                             "(`probe models windows`)")
        first, last, size = match.groups()
        lo, hi = (0, depth - 1) if first == "all" else (int(first), int(last or first))
        if lo > hi or hi >= depth:
            raise ProbeError(f"window {name}: layers must lie in 0..{depth - 1}")
        window = _window(name, size, grid)
        for layer in range(lo, hi + 1):
            windows[layer] = window
    return tuple(windows)


def _window(name: str, size: str, grid: tuple[int, int]) -> Window:
    if size == "global":
        return 0
    if size.startswith("p"):
        side = int(size[1:])
        if not 1 <= side <= max(grid):
            raise ProbeError(f"window {name}: partitions must be 1 to {max(grid)} tokens wide "
                             f"on the {grid[0]}x{grid[1]} token grid")
        from probe.models.attention import Partition  # imports torch: only for a partition

        return Partition(side)
    side = int(size)
    if side < 1 or side % 2 == 0:
        raise ProbeError(f"window {name}: size must be odd (centred on the query)")
    if side > 2 * max(grid) - 1:
        raise ProbeError(f"window {name}: {side}x{side} is larger than the "
                         f"{grid[0]}x{grid[1]} token grid allows")
    return side


def window_layout(arch: str, image_size: int) -> tuple[int, tuple[int, int]]:
    """(attention layers, token grid) that a `--window` spec of this preset is checked against;
    depth 0: the preset takes no windows (UNets, U-DiT)."""
    kwargs = preset(arch).kwargs
    grid = (image_size // kwargs.get("patch", 1),) * 2
    if kwargs.get("kind") == "image":  # image-space DiffiT: every ResBlock of the U, in order
        from probe.models.diffit import layer_count

        return layer_count(kwargs["blocks"]), grid
    depth = kwargs.get("depth")
    return (depth if isinstance(depth, int) else 0), grid


def build(cfg: ModelConfig, device: str | None = None) -> nn.Module:
    """The backbone of `cfg`. device="meta" builds shapes only: no memory, no initialisation
    (DiT-XL/2 in a fraction of a second instead of seconds and 2.7 GB), enough to validate a
    configuration, count its operations or list its hook points."""
    p = preset(cfg.arch)
    module = importlib.import_module(FAMILIES[p.family])
    try:
        if device is None:
            return module.build(cfg, **p.kwargs)
        import torch

        with torch.device(device):
            model = module.build(cfg, **p.kwargs)
        return model.to(device)  # tensors made from numpy (sin-cos tables) start on the CPU
    except ValueError as exc:  # shape mismatches (image size vs patch, ...) are user errors
        raise ProbeError(f"{cfg.arch}: {exc}") from None


def build_denoiser(cfg: RunConfig) -> nn.Module:
    """The run's backbone behind the `Denoiser` interface of its objective (fresh weights)."""
    from probe.models.denoiser import Denoiser

    return Denoiser(build(cfg.model), cfg.train.objective, cfg.model.channels,
                    cfg.model.image_size)


def count(cfg: ModelConfig) -> Counts:
    """Parameters and MACs per image of `cfg`'s preset without building it (`probe.models.counts`:
    the figures `count_parameters(build(cfg))` and `macs_per_image(inference_form(...))` give)."""
    from probe.models.counts import FAMILIES as COUNTERS

    p = preset(cfg.arch)
    try:
        return COUNTERS[p.family](cfg, **p.kwargs)
    except ValueError as exc:
        raise ProbeError(f"{cfg.arch}: {exc}") from None


def inference_form(model: nn.Module) -> nn.Module:
    """The model as inference runs and papers count it: U-DiT with its feed-forward branches merged
    (`UDiT.merged()`); every other family as it is."""
    merged = getattr(model, "merged", None)
    return merged() if callable(merged) else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_image(model: nn.Module, cfg: ModelConfig) -> int:
    """Multiply-accumulates of one forward pass of `model` on one image, from torch's FLOP counter.

    The forward runs as training and sampling run it (fused or block-sparse attention), so a
    layer that attends within partitions costs its partitions, not the full [query, key] grid the
    explicit (probing) path materialises. On the model's device: a meta-device model is counted
    without computing anything (there SDPA runs as plain matmuls, which the counter sees).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    device = next(model.parameters()).device
    x = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if cfg.num_classes else None
    # The counter has no formula for the CPU flash-attention kernel (it would count 0): give it
    # the one it has for the CUDA kernels.
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v)}
    counter = FlopCounterMode(display=False, custom_mapping=cpu_sdpa)
    with counter, torch.no_grad():
        model(x, torch.ones(1, device=device), labels)
    return counter.get_total_flops() // 2


# U-DiT (Tian et al. 2405.02730): C, heads, blocks per level (enc1, enc2, latent, dec2, dec1), each
# block two attention + feed-forward sub-layers; S/B/L as released. XS is ours, for CPUs and tests.
# Parameters are counted as trained (rep), MACs on the merged model (`UDiT.merged()`), as published.
FAMILIES["udit"] = "probe.models.udit"
UDIT_SIZES = {"xs": (32, 2, (1, 1, 1, 1, 1)), "s": (96, 4, (2, 5, 8, 5, 2)),
              "b": (192, 8, (2, 5, 8, 5, 2)), "l": (384, 16, (2, 5, 8, 5, 2))}
for _size, (_width, _heads, _depth) in UDIT_SIZES.items():
    register(f"udit-{_size}", "udit",
             f"U-DiT-{_size.upper()}: C {_width}, heads {_heads}, "
             f"blocks {'-'.join(map(str, _depth))}; params as trained, MACs merged",
             width=_width, heads=_heads, depth=_depth)

# DiffiT (Hatamizadeh et al. 2312.02139): image-space U (C, width multipliers, ResBlocks per level,
# `partition`: the side of every layer's non-overlapping attention windows) and isotropic
# latent-style models (depth, width, heads, patch); latent-XL is the released size.
# The paper's image-space layout: every stage attends within non-overlapping windows, 4x4 tokens
# on CIFAR-10 (8x8 on FFHQ-64), and its CIFAR-10 U has 3 levels (32, 16, 8) with 2 DiffiT
# ResBlocks per stage. Left open by the paper, ours: C 128, mults 1-2-2, 4 heads, and the FFHQ-64
# U's depth (for 8x8 windows: `--arch diffit-s --window all:p8`). diffit-xs is ours, CPU-sized,
# with the paper's layout but one ResBlock per stage.
FAMILIES["diffit"] = "probe.models.diffit"
register("diffit-xs", "diffit", "DiffiT image-space U, ours (CPU): C 32, mults 1-2-2, "
         "blocks 1-1-1, heads 2, 4x4 partitions",
         kind="image", width=32, mults=(1, 2, 2), blocks=(1, 1, 1), heads=2, norm_groups=8,
         partition=4)
register("diffit-s", "diffit", "DiffiT image-space U, CIFAR-10 layout (Hatamizadeh et al.): "
         "3 levels, 2 blocks per stage, 4x4 partitions; C 128, mults 1-2-2, heads 4 (ours)",
         kind="image", width=128, mults=(1, 2, 2), blocks=(2, 2, 2), heads=4, partition=4)
DIFFIT_LATENT_SIZES = {"xs": (4, 128, 4), "s": (12, 384, 6), "xl": (28, 1152, 16)}
for _size, (_depth, _width, _heads) in DIFFIT_LATENT_SIZES.items():
    register(f"diffit-latent-{_size}", "diffit",
             f"latent DiffiT-{_size.upper()}/2: depth {_depth}, width {_width}, heads {_heads}",
             kind="latent", depth=_depth, width=_width, heads=_heads, patch=2)
