"""Sample-quality metrics on features: Frechet distance, KID, precision and recall.

The feature extractor is whatever the user provides locally (nothing is downloaded):
- the standard FID Inception weights, pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
  (a state dict, loaded into `probe.metrics.inception.FIDInceptionV3`; features: 2048-d pool3);
- a TorchScript module file (`torch.jit.save`). If its forward takes `return_features` (NVlabs'
  `inception-2015-12-05.pt` as used by StyleGAN/EDM) it is called the NVlabs way, on images in
  [0, 255] with return_features=True; any other module gets images in [-1, 1] (gray repeated to
  3 channels) and its output, flattened, is the feature vector;
- a `fid-digits` file (`probe fid-digits`, `probe.metrics.fid_digits`): TorchScript carrying its
  provenance; its kind reads `fid-digits`, so its numbers are never taken for FID-Inception's.
Pickled modules are refused (no pickled code anywhere). Without a file the metrics are skipped,
never replaced by another network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probe.errors import ProbeError
from probe.metrics.fid_digits import NAME, load_script
from probe.metrics.inception import FIDInceptionV3, is_fid_inception_state_dict

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
PR_K = 3  # Kynkaanniemi et al.'s neighbourhood size


# ------------------------------------------------------------------------ feature extractors


class FeatureExtractor:
    """`extractor(images [n, C, H, W] in [-1, 1]) -> float64 features [n, F]`, in batches."""

    def __init__(self, module: torch.nn.Module, kind: str, path: Path, device=None,
                 batch: int = 64, meta: dict | None = None):
        self.module, self.kind, self.path = module.eval(), kind, Path(path)
        self.meta = meta  # a fid-digits network's provenance (None for other extractors)
        self.device = device or torch.device("cpu")
        self.batch = batch
        self.module.to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for lo in range(0, len(images), self.batch):
            x = images[lo: lo + self.batch].to(self.device, torch.float32)
            if x.shape[1] == 1 and self.kind != NAME:  # fid-digits takes gray as it is
                x = x.expand(-1, 3, -1, -1)
            if self.kind == "nvlabs":
                y = self.module((x + 1) * 127.5, return_features=True)
            else:
                y = self.module(x)
            out.append(y.reshape(len(x), -1).double().cpu())
        return torch.cat(out).numpy()


def load_feature_extractor(path: str | Path, device=None, batch: int = 64) -> FeatureExtractor:
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"FID weights file not found: {path}")
    module, digits_meta = load_script(path)
    if module is not None:
        if digits_meta is not None:
            return FeatureExtractor(module, NAME, path, device, batch, digits_meta)
        args = [a.name for a in module.forward.schema.arguments]
        return FeatureExtractor(module, "nvlabs" if "return_features" in args else "script",
                                path, device, batch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ProbeError(f"{path} is neither TorchScript nor a weights-only state dict "
                         f"({type(exc).__name__})") from None
    if not is_fid_inception_state_dict(state):
        raise ProbeError(f"{path} is a state dict but not the FID Inception weights "
                         "(pt_inception-2015-12-05); give a TorchScript module instead")
    model = FIDInceptionV3()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ProbeError(f"{path} does not fit the FID Inception-v3: "
                         f"{str(exc).splitlines()[0]}") from None
    return FeatureExtractor(model, "fid-inception", path, device, batch)


# ---------------------------------------------------------------------------------- metrics


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between two Gaussians.

    tr (C1 C2)^(1/2) = tr (C1^(1/2) C2 C1^(1/2))^(1/2), a symmetric PSD root: computed by
    eigendecomposition, which stays real and stable where scipy's sqrtm of C1 C2 can go complex.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    s1 = _sqrt_psd(cov1)
    w = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean)


def fid(real, fake) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 (U-statistic: diagonal terms left out) with the cubic polynomial kernel
    k(a, b) = (a.b / d + 1)^3 of Binkowski et al."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(real, fake, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                            fake[rng.choice(len(fake), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _kth_radius(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row."""
    out = []
    for lo in range(0, len(x), chunk):
        d = torch.cdist(x[lo: lo + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself, at distance 0
    return torch.cat(out)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
             chunk: int = 1024) -> torch.Tensor:
    """Whether each point lies in the union of balls (centre, radius)."""
    out = []
    for lo in range(0, len(points), chunk):
        d = torch.cdist(points[lo: lo + chunk], centres)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real, fake, k: int = PR_K) -> tuple[float, float]:
    """Kynkaanniemi et al. (2019): precision = share of fake samples inside the real manifold
    (union of balls reaching each real feature's k-th neighbour); recall the other way round."""
    r = torch.as_tensor(np.asarray(real, np.float64))
    f = torch.as_tensor(np.asarray(fake, np.float64))
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall needs more than k={k} samples per set")
    precision = _covered(f, r, _kth_radius(r, k)).double().mean()
    recall = _covered(r, f, _kth_radius(f, k)).double().mean()
    return float(precision), float(recall)
