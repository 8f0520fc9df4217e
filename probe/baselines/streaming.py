"""Posterior means over a candidate set too large to hold at once: a streaming log-sum-exp.

Every analytic denoiser here is a softmax-weighted average. For queries q_m (noisy images or
noisy patches) and candidates (k_j, v_j) (training images or training patches and their centre
pixels), at noise level s_m,

    out_m = sum_j softmax_j(-||q_m - k_j||^2 / (2 s_m^2)) v_j.

The ||q_m||^2 term is the same for every j and cancels in the softmax, so a block of
candidates costs one GEMM for the logits (q_m . k_j - ||k_j||^2 / 2) / s_m^2 and one for the
weighted values. `OnlineSoftmax` keeps, per query, the running maximum logit m, the sum of
exp(logit - m) and the weighted sum of values, and rescales both by exp(m_old - m_new) when a
block raises the maximum (Milakov & Gimelshein's online softmax). Peak memory is one block of
logits [M, block] instead of [M, N]; the answer is exact (float rounding aside).

Precision: the logits subtract two large numbers (q . k and ||k||^2 / 2) before dividing by
s^2, so float32 inputs lose about 1e-7 ||x||^2 / s^2 in each logit: at 28x28 and s = 0.01 that
is a few units, enough to mix two nearly equidistant training images, never to pick a far one.
Pass float64 inputs where the weights themselves are under test. Everything is plain torch, so
autograd (the Jacobian probe) differentiates through it.
"""

from __future__ import annotations

import torch

BLOCK_BYTES = 32 << 20  # logits held per block (measured: 16-64 MiB all run at GEMM speed)


def block_rows(queries: int, itemsize: int = 4, budget: int = BLOCK_BYTES) -> int:
    """Candidates per block so that one [queries, block] logit matrix stays within budget."""
    return max(16, budget // max(1, queries * itemsize))


class OnlineSoftmax:
    """Accumulates sum_j softmax_j(logits) v_j block by block (functional: autograd-safe).

    `add(logits [..., M, n], values [..., n, C])` for each block; `result()` -> [..., M, C].
    """

    def __init__(self):
        self.m = self.z = self.acc = None

    def add(self, logits: torch.Tensor, values: torch.Tensor) -> None:
        m_block = logits.amax(-1, keepdim=True)
        if self.m is None:
            w = torch.exp(logits - m_block)
            self.m, self.z, self.acc = m_block, w.sum(-1, keepdim=True), w @ values
            return
        m = torch.maximum(self.m, m_block)
        w = torch.exp(logits - m)
        old = torch.exp(self.m - m)
        self.z = self.z * old + w.sum(-1, keepdim=True)
        self.acc = self.acc * old + w @ values
        self.m = m

    def result(self) -> torch.Tensor:
        return self.acc / self.z


def logits(queries: torch.Tensor, keys: torch.Tensor, half_sq_norms: torch.Tensor,
           inv_var: torch.Tensor) -> torch.Tensor:
    """(q . k - ||k||^2 / 2) / s^2 for queries [..., M, D], keys [..., n, D]; `half_sq_norms`
    [..., n] = ||k||^2 / 2 and `inv_var` [..., M, 1] = 1 / s^2 per query."""
    return (queries @ keys.transpose(-1, -2) - half_sq_norms.unsqueeze(-2)) * inv_var
