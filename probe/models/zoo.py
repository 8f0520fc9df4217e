"""Registry of named model presets: `build(ModelConfig)` -> backbone.

A preset is a family (dit, unet, bf-unet, udit, diffit) plus its size arguments. DiT names follow
the paper, `dit-{xs,s,b,l,xl}/{1,2,4,8}` (the number is the patch size). Each family module
exposes `build(cfg, **kwargs)`; it is imported only when a preset of that family is built, so
listing presets stays cheap.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from probe.config import ModelConfig
from probe.errors import ProbeError


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""


FAMILIES = {  # family -> module with build(cfg, **kwargs)
    "dit": "probe.models.dit",
}
PRESETS: dict[str, Preset] = {}


def register(name: str, family: str, description: str = "", **kwargs) -> None:
    PRESETS[name] = Preset(name, family, kwargs, description)


# DiT sizes: (depth, width, heads). XS is ours: a CPU-sized model for laptops and tests.
DIT_SIZES = {"xs": (4, 128, 4), "s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16),
             "xl": (28, 1152, 16)}
for _size, (_depth, _width, _heads) in DIT_SIZES.items():
    for _patch in (1, 2, 4, 8):
        register(f"dit-{_size}/{_patch}", "dit",
                 f"DiT-{_size.upper()}/{_patch}: depth {_depth}, width {_width}, heads {_heads}",
                 depth=_depth, width=_width, heads=_heads, patch=_patch)


def preset(arch: str) -> Preset:
    try:
        return PRESETS[arch]
    except KeyError:
        raise ProbeError(f"unknown arch {arch!r}; `probe models list` shows the presets") from None


def parse_windows(specs: tuple[str, ...] | list[str], depth: int, grid: tuple[int, int]
                  ) -> tuple[int, ...]:
    """["0-3:5", "7:3"] -> per-layer window sides (0 = global). Validates against the model."""
    windows = [0] * depth
    for spec in specs:
        match = re.fullmatch(r"\s*(all|\d+)(?:-(\d+))?\s*:\s*(\d+)\s*", spec)
        if not match:
            raise ProbeError(f"bad window {spec!r}: expected LAYERS:SIZE such as 0-3:5 or all:7")
        first, last, size = match.groups()
        lo, hi = (0, depth - 1) if first == "all" else (int(first), int(last or first))
        size = int(size)
        if lo > hi or hi >= depth:
            raise ProbeError(f"window {spec!r}: layers must lie in 0..{depth - 1}")
        if size < 1 or size % 2 == 0:
            raise ProbeError(f"window {spec!r}: size must be odd (centred on the query)")
        if size > 2 * max(grid) - 1:
            raise ProbeError(f"window {spec!r}: {size}x{size} is larger than the "
                             f"{grid[0]}x{grid[1]} token grid allows")
        for layer in range(lo, hi + 1):
            windows[layer] = size
    return tuple(windows)


def build(cfg: ModelConfig) -> nn.Module:
    p = preset(cfg.arch)
    module = importlib.import_module(FAMILIES[p.family])
    try:
        return module.build(cfg, **p.kwargs)
    except ValueError as exc:  # shape mismatches (image size vs patch, ...) are user errors
        raise ProbeError(f"{cfg.arch}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_image(model: nn.Module, cfg: ModelConfig) -> int:
    """Multiply-accumulates of one forward pass on one image, from torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    labels = torch.zeros(1, dtype=torch.long) if cfg.num_classes else None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, torch.ones(1), labels)
    return counter.get_total_flops() // 2
