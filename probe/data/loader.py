"""Batches from a memory-mapped uint8 array, as a pure function of the step.

The batch at step s depends only on (seed, s): the subset is tiled by successive seeded
permutations, so N = 10 and N = 10^4 runs take the same number of steps, and a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, C] -> contiguous float32 [..., C, H, W] in [-1, 1].

    Done in numpy in one pass: torch's intra-op threads cost milliseconds per small batch on a
    busy CPU, and a contiguous result lets models `.view()` it.
    """
    src = np.moveaxis(np.asarray(images), -1, -3)
    out = np.empty(src.shape, np.float32)
    np.divide(src, np.float32(127.5), out=out, casting="unsafe")  # 255 / 127.5 == 2 exactly
    out -= 1
    return torch.from_numpy(out)


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
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world={world}")
        self.images = images
        self.indices = np.asarray(indices, np.int64)
        if self.indices.min() < 0 or self.indices.max() >= len(images):
            raise ValueError(f"subset indices out of range for {len(images)} images")
        self.batch_size = batch_size
        self.seed = seed
        # Under DDP each rank takes its own slice of the global batch at the same step.
        self.rank, self.world = rank, world
        self._epochs: dict[int, np.ndarray] = {}  # the last few epochs' orders (a pure cache)

    def _epoch(self, epoch: int) -> np.ndarray:
        order = self._epochs.get(epoch)
        if order is None:
            rng = np.random.default_rng([self.seed, epoch])
            order = self.indices[rng.permutation(len(self.indices))]
            if len(self._epochs) >= 4:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = order
        return order

    def indices_at(self, step: int) -> np.ndarray:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, global_batch = len(self.indices), self.batch_size * self.world
        start = step * global_batch + self.rank * self.batch_size
        stop = start + self.batch_size
        first, last = start // n, (stop - 1) // n
        tiled = np.concatenate([self._epoch(e) for e in range(first, last + 1)])
        return tiled[start - first * n : stop - first * n]

    def batch(self, step: int) -> torch.Tensor:
        return to_model_range(gather(self.images, self.indices_at(step)))


class PreparedImages:
    """What a Run on a prepared data set (`self.prepared`) derives from it: its rows in the model
    range, its hash and its image shape."""

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """Rows of the data set as float [N, C, H, W] in [-1, 1]."""
        return to_model_range(gather(self.prepared.images, np.asarray(indices, np.int64)))

    @property
    def data_sha256(self) -> str:
        return self.prepared.sha256

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.prepared.manifest
        return (int(m["channels"]), int(m["size"]), int(m["size"]))
