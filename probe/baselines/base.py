"""What every analytic denoiser shares: the attributes samplers and probes read, the noise
level as a per-sample column, and the training images as blocks (in memory or read from disk).

Samplers read `objective`, `channels`, `image_size` and `sigma_range`. An analytic denoiser is
exact at every sigma, so it takes EDM's range and noise levels (`objective = "edm"`: the
ancestral sampler on Karras sigmas by default). `backbone` is the module itself: probes that
look for hook points (attention-locality) find none and say so in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

SIGMA_RANGE = (0.002, 80.0)


class TrainingImages:
    """A training set as float blocks [rows, C, H, W] on [-1, 1]: held in memory (`tensor`), or
    read `chunk` rows at a time by `read(lo, hi)` (a memory-mapped prepared array), so a set
    larger than memory streams from disk."""

    def __init__(self, tensor: torch.Tensor | None = None, read: Callable | None = None,
                 count: int = 0, shape: tuple[int, int, int] | None = None, chunk: int = 0):
        if tensor is None and read is None:
            raise ValueError("TrainingImages needs a tensor or a reader")
        self.tensor, self.read = tensor, read
        self.count = len(tensor) if tensor is not None else int(count)
        self.shape = tuple(tensor.shape[1:]) if tensor is not None else tuple(shape)
        self.chunk = int(chunk)

    def __len__(self) -> int:
        return self.count

    def blocks(self, rows: int, dtype=torch.float32, device=None
               ) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, block) for consecutive blocks of at most `rows` images."""
        step = max(1, min(rows, self.chunk) if self.chunk else rows)
        for lo in range(0, self.count, step):
            hi = min(self.count, lo + step)
            block = self.tensor[lo:hi] if self.tensor is not None else self.read(lo, hi)
            yield lo, block.to(device=device, dtype=dtype)

    def all(self, dtype=torch.float32) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor.to(dtype)
        return torch.cat([b for _, b in self.blocks(self.chunk or 4096, dtype)])


def as_images(images) -> TrainingImages:
    return images if isinstance(images, TrainingImages) else TrainingImages(
        torch.as_tensor(images))


class AnalyticDenoiser(nn.Module):
    """Base of the closed-form denoisers: forward(x [B, C, H, W], sigma scalar or [B])."""

    objective = "edm"
    sigma_range = SIGMA_RANGE
    kind = "analytic"

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.channels, self.image_size = self.shape[0], self.shape[-1]

    @property
    def backbone(self) -> nn.Module:
        return self

    @staticmethod
    def sigma_column(sigma, x: torch.Tensor) -> torch.Tensor:
        """sigma as a [B, 1] column in x's dtype."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return (s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(-1)).reshape(-1, 1)
