"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import math

import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every trainable weight (adaLN-Zero's zeros too) with small noise, so a fresh
    model computes something non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                fan_in = p.shape[-1] if p.ndim > 1 else 10
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(fan_in))
    return model


def build_preset(arch: str, channels: int = 1, learn_sigma: bool = False, num_classes: int = 0,
                 image_size: int = 16, windows=()) -> torch.nn.Module:
    """A zoo preset, deterministically initialised."""
    from probe.config import ModelConfig
    from probe.models import zoo

    torch.manual_seed(0)
    return zoo.build(ModelConfig(arch=arch, image_size=image_size, channels=channels,
                                 learn_sigma=learn_sigma, num_classes=num_classes,
                                 windows=windows))


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Move every weight off its initial value (zero-initialised heads would hide the rest)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen))
    return model
