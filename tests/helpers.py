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
