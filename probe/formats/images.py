"""Images and image grids as PNG files (no matplotlib needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from probe import artifacts


def grid(images: np.ndarray, columns: int | None = None, pad: int = 1, scale: int = 1
         ) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad), cols*(W+pad), C] mosaic."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        y, x = divmod(i, columns)
        out[pad + y * (h + pad): pad + y * (h + pad) + h,
            pad + x * (w + pad): pad + x * (w + pad) + w] = img
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def write_png(path: Path, image: np.ndarray) -> Path:
    """One uint8 [H, W, C] image, written atomically."""
    image = image[..., 0] if image.shape[-1] == 1 else image
    with artifacts.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_grid(path: Path, images: np.ndarray, columns: int | None = None) -> Path:
    scale = max(1, 128 // images.shape[1])  # small images are upscaled so they can be seen
    return write_png(path, grid(images, columns, scale=scale))
