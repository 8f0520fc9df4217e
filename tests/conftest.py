"""Shared fixtures. Data-layer fixtures are prefixed `data_`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The suite runs one xdist worker per core: more torch threads per worker oversubscribe the
# cores, and OpenMP's spinning threads then make every op many times slower.
torch.set_num_threads(1)

# Partition codes of the fake CelebA (0 train, 1 valid, 2 test), one per image.
DATA_CELEBA_CODES = (0, 0, 1, 0, 2, 0, 0, 1, 2, 0, 0, 2, 0, 0)


@pytest.fixture
def data_celeba_root(tmp_path) -> Path:
    """A CelebA folder in the real layout: img_align_celeba/NNNNNN.jpg (178x218 RGB noise) and
    list_eval_partition.txt with codes DATA_CELEBA_CODES."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = []
    for i, code in enumerate(DATA_CELEBA_CODES, 1):
        name = f"{i:06d}.jpg"
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img_align_celeba" / name, quality=90)
        lines.append(f"{name} {code}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def data_image_folder(tmp_path) -> Path:
    """Eight distinct random images (PNG and JPEG, several sizes) spread over nested folders."""
    root = tmp_path / "images"
    rng = np.random.default_rng(2)
    names = ["a.png", "b.JPG", "sub/c.png", "sub/d.jpeg", "sub/deeper/e.png", "f.bmp",
             "sub/g.webp", "h.png"]
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, **({"lossless": True} if name.endswith("webp")
                                             else {}))
    (root / "notes.txt").write_text("not an image\n")
    return root
