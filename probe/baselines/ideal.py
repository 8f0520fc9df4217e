"""The ideal (memorizing) denoiser: the exact posterior mean of the empirical distribution of
N training images x_i,

    D(x, s) = sum_i softmax_i(-||x - x_i||^2 / (2 s^2)) x_i,

the MMSE denoiser of a model that has learned its training set perfectly. As s -> 0 it returns
the nearest training image, so everything it samples is a training image (Kamb & Ganguli's
"ideal score machine").

Cost: per block of training images K [n, d], one GEMM for the logits (B x d x n) and one for
the weighted sum (B x n x d), with a streaming log-sum-exp across blocks
(probe.baselines.streaming): memory is one [B, block] logit matrix, never [B, N, d] (12 GiB
for 64 queries at N = 60,000). Measured (benchmarks/bench_baselines.py, 64 queries, 28x28, one
thread): N = 5,000 digits 5,600 images/s, 1.07x the two bare GEMMs, 83x a per-image loop;
N = 60,000 (the 5,000 tiled) 445 images/s, 0.99x the GEMMs, 81x the loop.
"""

from __future__ import annotations

import torch

from probe.baselines.base import AnalyticDenoiser, TrainingImages, as_images
from probe.baselines.streaming import OnlineSoftmax, block_rows, keys, logits, queries


class IdealDenoiser(AnalyticDenoiser):
    kind = "ideal"

    def __init__(self, images, dtype=torch.float32):
        train = as_images(images)
        super().__init__(train.shape)
        self.training_set: TrainingImages = train
        self.dtype = dtype
        if train.tensor is not None:  # in memory: [x_i, ||x_i||^2 / 2] once
            flat = train.tensor.reshape(len(train), -1).to(dtype)
            self.register_buffer("augmented", keys(flat).contiguous(), persistent=False)
        else:
            self.augmented = None

    def _blocks(self, rows: int, dtype, device):
        """(augmented keys [n, d + 1], values [n, d]) per block of training images."""
        if self.augmented is not None:
            for lo in range(0, len(self.augmented), rows):
                block = self.augmented[lo: lo + rows].to(device, dtype)
                yield block, block[:, :-1]
            return
        for _, block in self.training_set.blocks(rows, dtype, device):
            flat = block.reshape(len(block), -1)
            yield keys(flat), flat

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        q = queries(x.reshape(len(x), -1), self.sigma_column(sigma, x).pow(-2))
        acc = OnlineSoftmax()
        for k, values in self._blocks(block_rows(len(x)), x.dtype, x.device):
            acc.add(logits(q, k), values)
        return acc.result().reshape(x.shape)
