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

# Logits held per block. Measured (ELS, 16x16, P = 9, one thread): 8 MiB blocks run 2-7x
# faster than 32 MiB ones, whose buffers glibc maps fresh (and page-faults) on every block;
# 4 MiB is as fast, 2 MiB 1.4x slower (more, smaller GEMMs).
BLOCK_BYTES = 8 << 20
# exp() of arguments below about -87 (float32 underflow) takes a slow path: measured 50-100x
# slower per element than of moderate ones. Weights below exp(-80) ~ 2e-35 of the largest are
# clamped up to it: at most (candidates x 2e-35) of the total mass, far below float rounding.
EXP_FLOOR = -80.0


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
        # Without autograd (samplers, one-step probes) the block is reused in place: three
        # fewer passes over the largest tensor here. With autograd (Jacobians), out of place.
        inplace = not torch.is_grad_enabled()
        m_block = logits.amax(-1, keepdim=True)
        m = m_block if self.m is None else torch.maximum(self.m, m_block)
        if inplace:
            w = logits.sub_(m).clamp_(min=EXP_FLOOR).exp_()
        else:
            w = torch.exp((logits - m).clamp_min(EXP_FLOOR))
        if self.m is None:
            self.m, self.z, self.acc = m, w.sum(-1, keepdim=True), w @ values
            return
        old = torch.exp((self.m - m).clamp_min(EXP_FLOOR))
        self.z = self.z * old + w.sum(-1, keepdim=True)
        self.acc = self.acc * old + w @ values
        self.m = m

    def result(self) -> torch.Tensor:
        return self.acc / self.z


def queries(q: torch.Tensor, inv_var: torch.Tensor) -> torch.Tensor:
    """[..., M, D] queries and their 1 / s^2 [..., M, 1] -> [q / s^2, -1 / s^2] [..., M, D + 1]."""
    return torch.cat([q * inv_var, -inv_var.expand(*q.shape[:-1], 1)], -1)


def keys(k: torch.Tensor) -> torch.Tensor:
    """[..., n, D] candidates -> [k, ||k||^2 / 2] [..., n, D + 1]."""
    return torch.cat([k, 0.5 * k.pow(2).sum(-1, keepdim=True)], -1)


def logits(q_aug: torch.Tensor, k_aug: torch.Tensor) -> torch.Tensor:
    """(q . k - ||k||^2 / 2) / s^2 [..., M, n] as one GEMM of the augmented rows (`queries`,
    `keys`): folding the bias and the scale into the product saves two passes over the
    largest tensor (measured 1.5x on the ELS machine at P = 3)."""
    return q_aug @ k_aug.transpose(-1, -2)
