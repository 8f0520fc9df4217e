"""Kamb & Ganguli's local score machines ("An analytic theory of creativity in convolutional
diffusion models", 2024): closed-form denoisers with a conv net's two inductive biases.

Locality: output pixel u sees only the P x P neighbourhood x_Omega(u) of the noisy image, and
is the posterior mean of that neighbourhood's centre under a set of training patches phi:

    D(x, s)_u = sum_phi softmax_phi(-||x_Omega(u) - phi||^2 / (2 s^2)) phi_centre.

- `ls` (local score machine): the candidates for pixel u are the N training patches at u.
- `els` (equivariant local score machine): translation equivariance adds the training patches
  at every location, N x H x W candidates.

Boundaries (`boundary`): `zeros` pads with zeros, as the conv nets compared against do; a
patch overlapping the border is then only compared with training patches of the same overlap
(Kamb & Ganguli's boundary-broken equivariance: locations are grouped by their clipped offset
from the border, (2r + 1)^2 groups for r = (P - 1) / 2; the interior is one group). `periodic`
wraps around (circular padding): every location is alike, the els machine is exactly
translation equivariant, and with P equal to the (odd) image size the els machine is the ideal
denoiser of the training set augmented by all cyclic shifts, and the ls machine the ideal one.

The patch size may depend on sigma (`PatchSchedule`): Kamb & Ganguli calibrate it per noise
level against the trained model (probe.probes.calibration).

Cost: locations sharing candidates form groups of equal size that are stacked, so each block
of training images costs one batched GEMM per group size (three for `zeros`, one for
`periodic` els, one of H W tiny ones for ls), with the streaming log-sum-exp of
probe.baselines.streaming. Training patches are cut block by block (F.unfold of a few images),
never for the whole set: at 16x16, N = 5,000, P = 9 that tensor would be 415 MB. Measured
(benchmarks/bench_baselines.py, 16x16, N = 5,000, 4 queries, one thread): periodic els 1.7 / 1.7
/ 0.7 images/s at P = 3 / 5 / 9, 22x / 60x / 90x a naive per-pixel loop over the materialised
patch tensor; zero padding (fewer candidates per location) 4.2 / 5.3 / 3.7 images/s.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probe.baselines.base import AnalyticDenoiser, TrainingImages, as_images
from probe.baselines.streaming import BLOCK_BYTES, OnlineSoftmax, keys, logits, queries
from probe.errors import ProbeError

BOUNDARIES = ("zeros", "periodic")


def check_patch(patch: int, shape: tuple[int, ...]) -> int:
    """A patch size must be odd (it has a centre) and fit in the image."""
    h, w = int(shape[-2]), int(shape[-1])
    if patch < 1 or patch % 2 == 0:
        raise ProbeError(f"patch size must be a positive odd number (it needs a centre "
                         f"pixel), got {patch}")
    if patch > min(h, w):
        raise ProbeError(f"patch size {patch} is larger than the {h}x{w} image")
    return int(patch)


@dataclass(frozen=True)
class PatchSchedule:
    """Patch size per noise level: `patches[i]` from `sigmas[i]` (ascending) up to the next knot;
    below the first knot the first size. One knot = a constant patch size."""

    sigmas: tuple[float, ...]
    patches: tuple[int, ...]

    @classmethod
    def constant(cls, patch: int) -> PatchSchedule:
        return cls((0.0,), (int(patch),))

    @classmethod
    def from_pairs(cls, pairs) -> PatchSchedule:
        pairs = sorted((float(s), int(p)) for s, p in pairs)
        return cls(tuple(s for s, _ in pairs), tuple(p for _, p in pairs))

    def __call__(self, sigma: float) -> int:
        """The patch of the largest knot <= sigma (nearest in log sigma between knots would
        be finer; the knots are the calibration's sigmas, dense enough)."""
        i = bisect.bisect_right(self.sigmas, float(sigma) * (1 + 1e-9)) - 1
        return self.patches[max(i, 0)]

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "patches": list(self.patches)}

    @classmethod
    def from_dict(cls, doc: dict) -> PatchSchedule:
        return cls.from_pairs(zip(doc["sigmas"], doc["patches"]))


def _offset(i: int, size: int, r: int) -> int:
    """How far a patch centred at i sticks out of [0, size): <0 at the start, >0 at the end."""
    return i - r if i < r else (i - (size - 1 - r) if i > size - 1 - r else 0)


def location_groups(shape, patch: int, equivariant: bool, boundary: str
                    ) -> list[torch.Tensor]:
    """Locations (flat indices h * W + w) that share candidate patches, stacked by group size:
    each tensor is [groups, size]."""
    h, w = int(shape[-2]), int(shape[-1])
    if not equivariant:  # ls: every location alone
        return [torch.arange(h * w).reshape(-1, 1)]
    if boundary == "periodic":
        return [torch.arange(h * w).reshape(1, -1)]
    r = (patch - 1) // 2
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(h):
        for j in range(w):
            groups.setdefault((_offset(i, h, r), _offset(j, w, r)), []).append(i * w + j)
    by_size: dict[int, list[list[int]]] = {}
    for members in groups.values():
        by_size.setdefault(len(members), []).append(members)
    return [torch.tensor(g) for _, g in sorted(by_size.items(), reverse=True)]


def patches_of(x: torch.Tensor, patch: int, boundary: str) -> torch.Tensor:
    """Every P x P neighbourhood of x [B, C, H, W] as [B, H W, C P P] (padded per boundary)."""
    r = (patch - 1) // 2
    if r:
        x = F.pad(x, (r, r, r, r), mode="circular" if boundary == "periodic" else "constant")
    return F.unfold(x, patch).transpose(1, 2)


class LocalScoreDenoiser(AnalyticDenoiser):
    """`equivariant=False`: the ls machine; `True`: the els machine."""

    def __init__(self, images, patch: int | PatchSchedule, equivariant: bool = True,
                 boundary: str = "zeros"):
        train: TrainingImages = as_images(images)
        super().__init__(train.shape)
        if boundary not in BOUNDARIES:
            raise ProbeError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        self.schedule = patch if isinstance(patch, PatchSchedule) else \
            PatchSchedule.constant(patch)
        for p in set(self.schedule.patches):
            check_patch(p, self.shape)
        self.training_set, self.equivariant, self.boundary = train, equivariant, boundary
        self.kind = "els" if equivariant else "ls"
        self._groups: dict[int, list[torch.Tensor]] = {}

    def groups(self, patch: int) -> list[torch.Tensor]:
        if patch not in self._groups:
            self._groups[patch] = location_groups(self.shape, patch, self.equivariant,
                                                  self.boundary)
        return self._groups[patch]

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        s = self.sigma_column(sigma, x).reshape(-1)
        sizes = [self.schedule(v) for v in s.tolist()]
        if len(set(sizes)) == 1:
            return self._denoise(x, s, sizes[0])
        out, order = [], []
        for p in sorted(set(sizes)):  # rows at different sigmas may need different patches
            rows = torch.tensor([i for i, q in enumerate(sizes) if q == p], device=x.device)
            out.append(self._denoise(x[rows], s[rows], p))
            order.append(rows)
        return torch.cat(out)[torch.cat(order).argsort()]

    def _denoise(self, x: torch.Tensor, s: torch.Tensor, patch: int) -> torch.Tensor:
        b, c = x.shape[0], self.channels
        noisy = patches_of(x, patch, self.boundary)  # [B, HW, D]
        groups = self.groups(patch)
        inv_var = s.pow(-2)
        accs = [OnlineSoftmax() for _ in groups]
        stacked_q = []
        for idx in groups:  # [G, n] -> augmented queries [G, B n, D + 1]
            g, n = idx.shape
            q = noisy[:, idx.reshape(-1)].reshape(b, g, n, -1).permute(1, 0, 2, 3)
            column = inv_var.repeat_interleave(n).reshape(1, -1, 1).expand(g, -1, 1)
            stacked_q.append(queries(q.reshape(g, b * n, -1), column))
        # logits per training image: sum over stacks of G x (B n) x n entries
        per_image = b * max(idx.shape[0] * idx.shape[1] ** 2 for idx in groups)
        rows = max(1, BLOCK_BYTES // (x.element_size() * per_image))
        for _, block in self.training_set.blocks(rows, x.dtype, x.device):
            keys_all = patches_of(block, patch, self.boundary)  # [nb, HW, D]
            centres_all = block.reshape(len(block), c, -1).transpose(1, 2)  # [nb, HW, C]
            nb = len(block)
            for idx, q, acc in zip(groups, stacked_q, accs):
                g, n = idx.shape
                flat = idx.reshape(-1)
                k = keys_all[:, flat].reshape(nb, g, n, -1).permute(1, 0, 2, 3) \
                    .reshape(g, nb * n, -1)
                values = centres_all[:, flat].reshape(nb, g, n, c).permute(1, 0, 2, 3) \
                    .reshape(g, nb * n, c)
                acc.add(logits(q, keys(k)), values)
        pieces = [acc.result().reshape(idx.shape[0], b, idx.shape[1], c).permute(1, 0, 2, 3)
                  .reshape(b, -1, c) for idx, acc in zip(groups, accs)]
        where = torch.cat([idx.reshape(-1) for idx in groups]).to(x.device)
        out = torch.cat(pieces, 1)[:, where.argsort()]  # [B, HW, C] in raster order
        return out.transpose(1, 2).reshape(x.shape)
