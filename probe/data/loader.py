"""Batches from a memory-mapped uint8 array, as a pure function of the step.

The batch at step s depends only on (seed, s): the subset is tiled by successive seeded
permutations, so N = 10 and N = 10^4 runs take the same number of steps, and a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, C] -> float32 [..., C, H, W] in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float()
    return tensor.movedim(-1, -3).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [..., C, H, W] in [-1, 1] -> uint8 [..., H, W, C]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def gather(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows of a (memory-mapped) array in the given order, read in ascending order on disk."""
    order = np.argsort(indices, kind="stable")
    out = np.empty((len(indices), *images.shape[1:]), images.dtype)
    out[order] = images[indices[order]]
    return out


class StepBatches:
    """`batch(step)` -> float tensor [B, C, H, W] in [-1, 1] from `indices` of `images`."""

    def __init__(self, images: np.ndarray, indices: np.ndarray, batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1):
        if len(indices) == 0:
            raise ValueError("empty subset")
        self.images = images
        self.indices = np.asarray(indices, np.int64)
        self.batch_size = batch_size
        self.seed = seed
        # Under DDP each rank takes its own slice of the global batch at the same step.
        self.rank, self.world = rank, world

    def _epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def indices_at(self, step: int) -> np.ndarray:
        n, global_batch = len(self.indices), self.batch_size * self.world
        start = step * global_batch + self.rank * self.batch_size
        stop = start + self.batch_size
        first, last = start // n, (stop - 1) // n
        tiled = np.concatenate([self._epoch(e) for e in range(first, last + 1)])
        return tiled[start - first * n : stop - first * n]

    def batch(self, step: int) -> torch.Tensor:
        return to_model_range(gather(self.images, self.indices_at(step)))
