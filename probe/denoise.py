"""`probe denoise`: what a model does to an image, in the [0, 1] terms people think in.

Inputs are PNG/JPEG (8-bit, scaled to [0, 1]) or `.npy` float arrays HxW or HxWxC in [0, 1].
With `sigma` (a std on that [0, 1] scale, whatever range the model was trained on) each image x
gets seeded Gaussian noise, y = x + sigma z with z from the stream ("denoise", seed, i) of
probe.seeding, so a rerun draws the same y; with `noisy=True` the input is y itself. The model is
reached through D(x_noisy, s) on [-1, 1] like every probe (probe.models.native maps it onto the
model's own range): s = 2 sigma, D(2 y - 1, 2 sigma) = 2 x_hat - 1. A blind model ignores s; a
conditional one needs `sigma` even with `noisy=True` (the level of the noise already there).

Outputs per input STEM under the output folder: `STEM.png` (noisy | denoised side by side,
clipped to 8 bits), `STEM.noisy.npy` and `STEM.denoised.npy` (float32 [H, W, C] on [0, 1],
unclipped); and, when the clean image is known (noise added here), the PSNRs of both against
it: 10 log10(1 / mse) on [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from probe import seeding
from probe.errors import ProbeError
from probe.formats.images import write_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Denoised:
    name: str
    noisy: np.ndarray  # [H, W, C] float32 on [0, 1]
    denoised: np.ndarray
    psnr_noisy: float | None = None
    psnr_denoised: float | None = None


def read_image(path: str | Path, noisy: bool = False) -> np.ndarray:
    """[H, W, C] float32 on [0, 1] from a PNG/JPEG or a `.npy` (one line when it is neither).
    A noisy `.npy` may leave [0, 1] (noise does); a clean one may not."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such image")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ProbeError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[-1] not in (1, 3) or not np.issubdtype(
                array.dtype, np.floating):
            raise ProbeError(f"{path}: a .npy image is a float array HxW or HxWxC (C = 1 or 3),"
                             f" got {array.dtype} {array.shape}")
        if not np.isfinite(array).all():
            raise ProbeError(f"{path}: .npy values must be finite")
        if not noisy and (array.min() < 0 or array.max() > 1):
            raise ProbeError(f"{path}: .npy values of a clean image must lie in [0, 1] "
                             "(use --noisy for an image that already holds its noise)")
        return array.astype(np.float32)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ProbeError(f"{path}: not a PNG, JPEG or .npy image")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("L", "I;16", "1", "LA") else "RGB")
            array = np.asarray(im, dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError) as exc:
        raise ProbeError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return array[..., None] if array.ndim == 2 else array


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """RGB -> grayscale (mean) or grayscale -> RGB (repeat), as the model needs."""
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return image.mean(axis=-1, keepdims=True)
    return np.repeat(image, channels, axis=-1)


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    mse = float(np.mean((estimate.astype(np.float64) - clean) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy().astype(np.float32)


@torch.no_grad()
def denoise_images(denoiser, paths: list[str | Path], *, channels: int,
                   image_size: int | None = None, sigma: float | None = None, seed: int = 0,
                   noisy: bool = False, blind: bool = False) -> list[Denoised]:
    """Denoise each image (see the module doc)."""
    if not noisy and sigma is None:
        raise ProbeError("give --sigma S (noise std on the [0, 1] scale) or --noisy")
    if noisy and sigma is None and not blind:
        raise ProbeError("this model takes its noise level: give --sigma with --noisy")
    out = []
    for index, path in enumerate(paths):
        image = to_channels(read_image(path, noisy), channels)
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            raise ProbeError(f"{path} is {image.shape[1]}x{image.shape[0]}; the model takes "
                             f"{image_size}x{image_size} images")
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        if noisy:
            y = chw
        else:
            y = chw + sigma * seeding.normal(tuple(chw.shape), seed, "denoise", index)
        s = 2 * (sigma if sigma is not None else 0.0)
        estimate = (denoiser(2 * y - 1, s) + 1) / 2
        item = Denoised(Path(path).stem, _hwc(y), _hwc(estimate))
        if not noisy:
            item.psnr_noisy, item.psnr_denoised = psnr(item.noisy, image), \
                psnr(item.denoised, image)
        out.append(item)
    return out


def write_outputs(items: list[Denoised], folder: str | Path) -> list[Path]:
    """STEM.png (noisy | denoised), STEM.noisy.npy, STEM.denoised.npy for each item."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for item in items:
        pair = np.concatenate([item.noisy, item.denoised], axis=1)
        png = write_png(folder / f"{item.name}.png",
                        (np.clip(pair, 0, 1) * 255 + 0.5).astype(np.uint8))
        for kind in ("noisy", "denoised"):
            path = folder / f"{item.name}.{kind}.npy"
            np.save(path, getattr(item, kind))
            written.append(path)
        written.insert(len(written) - 2, png)
    return written
