"""The file of `probe jacobian-basis`: probes/<run-id>/jacobian.h5.

One complete group per (image, sigma) under /jacobian/{image row}/{sigma:g}, holding

    eigenvalues            float64 [d or k]   of (J + J^T)/2, descending (all d: method full)
    eigenvectors           float32 [d, k]     top k, columns
    singular_values        float64 [d or k]
    left_singular_vectors  float32 [d, k]     J v_i = s_i u_i
    right_singular_vectors float32 [d, k]
    clean, noisy, denoised float32 [C, H, W]

and attrs method, trace, asymmetry, linearity, estimator (exact | hutchinson), probes,
products, k, d, image, sigma, sigma_index, seconds. Root attrs: the run's provenance, command,
config, method, images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from probe.formats.h5 import decode_attrs

FILENAME = "jacobian.h5"
ROOT = "jacobian"
VECTORS = ("eigenvectors", "left_singular_vectors", "right_singular_vectors")
VALUES = ("eigenvalues", "singular_values")
SCALARS = ("method", "trace", "asymmetry", "linearity", "estimator", "probes", "products")


def group_key(image: int, sigma: float) -> str:
    return f"{ROOT}/{int(image)}/{sigma:g}"


def write_group(group: h5py.Group, basis, clean: np.ndarray, noisy: np.ndarray,
                attrs: dict) -> None:
    """One (image, sigma): `basis` has the VALUES, VECTORS and SCALARS above and `denoised`."""
    shape = clean.shape
    for name in VALUES:
        group[name] = getattr(basis, name).astype(np.float64)
    for name in VECTORS:
        group[name] = getattr(basis, name).astype(np.float32)
    group["clean"] = clean.astype(np.float32)
    group["noisy"] = noisy.astype(np.float32)
    group["denoised"] = basis.denoised.reshape(shape).astype(np.float32)
    for name in SCALARS:
        group.attrs[name] = getattr(basis, name)
    group.attrs["k"] = basis.eigenvectors.shape[1]
    group.attrs["d"] = basis.eigenvectors.shape[0]
    for key, value in attrs.items():
        group.attrs[key] = value


def read_groups(path: str | Path) -> Iterator[dict]:
    """Every complete (image, sigma) group as a dict of arrays and attrs, ordered by image row
    then sigma."""
    with h5py.File(path, "r") as f:
        if ROOT not in f:
            return
        for image in sorted(f[ROOT], key=int):
            for sigma in sorted(f[ROOT][image], key=float):
                g = f[ROOT][image][sigma]
                if not g.attrs.get("complete", False):
                    continue
                item = {name: g[name][()] for name in g}
                item.update(decode_attrs(g.attrs))
                item["image"], item["sigma"] = int(image), float(sigma)
                yield item
