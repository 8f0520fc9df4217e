"""Frechet distance against closed forms, KID unbiasedness, precision/recall on separated
clusters, and the feature-extractor loaders (no weights are downloaded: random ones stand in)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.errors import ProbeError
from probe.metrics import fid as F
from probe.metrics import inception
from probe.metrics.inception import FIDInceptionV3


def test_frechet_distance_of_1d_and_commuting_gaussians():
    assert F.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    l1, l2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    got = F.frechet_distance(mu1, q @ np.diag(l1) @ q.T, mu2, q @ np.diag(l2) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_frechet_distance_of_non_commuting_2d_gaussians():
    # For 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M ~ C1 C2 (similar):
    c1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    c2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    tr_root = np.sqrt(np.trace(c1 @ c2) + 2 * np.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    want = 1.0**2 + 2.0**2 + np.trace(c1) + np.trace(c2) - 2 * tr_root
    assert F.frechet_distance([0, 0], c1, [1, -2], c2) == pytest.approx(want, rel=1e-9)
    assert F.frechet_distance([0, 0], c1, [0, 0], c1) == pytest.approx(0, abs=1e-9)


def test_fid_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (20000, 2))
    b = rng.normal(0, 2, (20000, 2)) + [3, 0]
    assert F.fid(a, b) == pytest.approx(9 + 2 * (2 - 1) ** 2, rel=0.03)


def test_kid_is_unbiased_on_equal_distributions_and_positive_otherwise():
    rng = np.random.default_rng(2)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
        unbiased.append(F.mmd2_unbiased(x, y))
        k = F._poly_kernel  # the V-statistic keeps the diagonals: biased upwards
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    stderr = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * stderr
    assert np.mean(biased) > 10 * stderr  # the test would catch a biased estimator
    far = rng.normal(size=(200, 6)) + 1.0
    mean, std = F.kid(rng.normal(size=(200, 6)), far, subsets=20, subset_size=100)
    assert mean > 5 * std > 0


def test_precision_recall_on_separated_clusters():
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.normal(0, 0.1, (100, 2)), rng.normal(10, 0.1, (100, 2))])
    assert F.precision_recall(real, real.copy()) == (1.0, 1.0)
    dropped = rng.normal(0, 0.1, (100, 2))  # only the first mode: precise, half the recall
    precision, recall = F.precision_recall(real, dropped)
    assert precision == pytest.approx(1.0, abs=0.03)
    assert recall == pytest.approx(0.5, abs=0.03)
    assert F.precision_recall(real, rng.normal(100, 0.1, (50, 2))) == (0.0, 0.0)


def test_fid_inception_state_dict_loads_strictly_and_gives_pool3_features(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(inception, "INPUT_SIZE", 75)  # the smallest input it takes: fast
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    # torchvision's inception_v3 has 27,161,264 parameters; without its auxiliary head
    # (3,326,696) and with pytorch-fid's 1008-way fc (+16,392) that leaves 23,850,960.
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    state = model.state_dict()
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    extractor = F.load_feature_extractor(path)
    assert extractor.kind == "fid-inception"
    images = torch.rand(2, 1, 16, 16) * 2 - 1  # gray: repeated to 3 channels
    features = extractor(images)
    assert features.shape == (2, 2048)
    with torch.no_grad():
        np.testing.assert_allclose(features, model(images).double().numpy(), rtol=1e-5,
                                   atol=1e-6)


class Mean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class NVLabsLike(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        return x.amax(dim=(1, 2, 3), keepdim=True) if return_features else x


def test_torchscript_extractors(tmp_path):
    torch.jit.save(torch.jit.script(Mean()), tmp_path / "mean.pt")
    torch.jit.save(torch.jit.script(NVLabsLike()), tmp_path / "nvlabs.pt")
    images = torch.full((3, 1, 4, 4), 1.0)
    images[1] = -1.0
    plain = F.load_feature_extractor(tmp_path / "mean.pt")
    assert plain.kind == "script"
    np.testing.assert_allclose(plain(images), [[1, 1, 1], [-1, -1, -1], [1, 1, 1]])
    nvlabs = F.load_feature_extractor(tmp_path / "nvlabs.pt")
    assert nvlabs.kind == "nvlabs"  # called on [0, 255] images with return_features=True
    np.testing.assert_allclose(nvlabs(images), [[255.0], [0.0], [255.0]])


def test_bad_weights_files_are_refused(tmp_path):
    with pytest.raises(ProbeError, match="not found"):
        F.load_feature_extractor(tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ProbeError, match="not the FID Inception"):
        F.load_feature_extractor(tmp_path / "other.pth")
    torch.save(Mean(), tmp_path / "pickled.pt")  # pickled code: refused, never unpickled
    with pytest.raises(ProbeError, match="neither TorchScript nor"):
        F.load_feature_extractor(tmp_path / "pickled.pt")
    broken = FIDInceptionV3().state_dict()
    broken["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(broken, tmp_path / "wrong-shape.pth")
    with pytest.raises(ProbeError, match="does not fit"):
        F.load_feature_extractor(tmp_path / "wrong-shape.pth")
