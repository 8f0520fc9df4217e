"""How close two denoisers' outputs are: pixelwise r^2 and cosine, per image.

For a model output a and a theory's output b on the same input (one image each),

    r^2(a, b) = 1 - ||b - a||^2 / ||a - mean(a)||^2,

the fraction of the model output's pixel variance the theory explains (Kamb & Ganguli's
coefficient of determination, computed per image; their Table 1 reports its median over
samples). It is 1 for identical outputs, 0 for a theory no better than the model's own mean
pixel value, and can be negative. cosine(a, b) = <a, b> / (||a|| ||b||) on the [-1, 1] scale.
"""

from __future__ import annotations

import numpy as np
import torch


def r2(model: torch.Tensor, theory: torch.Tensor) -> np.ndarray:
    """r^2 of `theory` against `model`, per image [B]."""
    a, b = model.flatten(1).double(), theory.flatten(1).double()
    residual = (b - a).pow(2).sum(1)
    total = (a - a.mean(1, keepdim=True)).pow(2).sum(1).clamp_min(1e-30)
    return (1 - residual / total).cpu().numpy()


def cosine(model: torch.Tensor, theory: torch.Tensor) -> np.ndarray:
    a, b = model.flatten(1).double(), theory.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30).cpu().numpy()
