"""Data layer: JPEG-folder preparation (images/s) and the memory-mapped batch loader (batches/s),
against its peer, decoding the same 64 JPEGs with Pillow at every step (what the cache avoids).

    python -m benchmarks data          # writes artifacts/benchmarks/data.json
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Row, measure, print_table, quick, write_results
from probe.artifacts import Artifacts
from probe.config import DataConfig
from probe.data.loader import StepBatches, to_model_range
from probe.data.prepare import prepare, to_array

SIZE, CHANNELS, BATCH = 32, 3, 64
CELEBA_WH = (178, 218)


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """CelebA-shaped JPEGs (178x218, quality 90): a smooth random field plus pixel noise, so the
    files cost about what photographs cost to decode (pure noise would be far slower)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (11, 9, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(CELEBA_WH, Image.BICUBIC), np.int16)
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    n_jpegs, n_images = (200, 2_000) if quick() else (2_000, 20_000)
    repeat = 2 if quick() else 5
    loader_steps, peer_steps = (50, 3) if quick() else (300, 10)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        jpeg_dir = tmp / "jpegs"
        jpeg_dir.mkdir()
        files = write_jpegs(jpeg_dir, n_jpegs)

        # --- preparation: list, decode, crop, box-reduce + bicubic, write the uint8 cache
        cfg = DataConfig(dataset="folder", root=str(jpeg_dir), size=SIZE, channels=CHANNELS)
        runs = itertools.count()
        for workers, label in ((None, "threads=all cores"), (1, "threads=1")):
            def prepare_once(workers=workers):
                prepare(cfg, Artifacts.at(tmp / f"art{next(runs)}"), workers=workers,
                        log=lambda msg: None)

            t = measure(prepare_once, repeat=max(2, repeat - 2))
            rows.append(Row(f"prepare {n_jpegs} JPEGs 178x218 -> 32x32x3 ({label})",
                            n_jpegs / t.median_s, "images/s", t))

        # --- batches: memory-mapped cache vs decoding the same JPEGs every step
        rng = np.random.default_rng(1)
        np.save(tmp / "images.npy",
                rng.integers(0, 256, (n_images, SIZE, SIZE, CHANNELS), dtype=np.uint8))
        images = np.load(tmp / "images.npy", mmap_mode="r")
        loader = StepBatches(images, np.arange(n_images), BATCH, seed=0)
        steps = itertools.count()

        def loader_run():
            for _ in range(loader_steps):
                batch = loader.batch(next(steps))
            assert batch.shape == (BATCH, CHANNELS, SIZE, SIZE)

        t_loader = measure(loader_run, repeat=repeat)
        loader_rate = loader_steps / t_loader.median_s
        rows.append(Row(f"StepBatches mmap, batch {BATCH}, {n_images} images", loader_rate,
                        "batches/s", t_loader, f"{loader_rate * BATCH:.0f} images/s"))

        peer_steps_counter = itertools.count()

        def peer_run():
            for _ in range(peer_steps):
                idx = loader.indices_at(next(peer_steps_counter))
                arrays = []
                for i in idx:
                    with Image.open(files[i % len(files)]) as im:
                        arrays.append(to_array(im, SIZE, CHANNELS, "center"))
                batch = to_model_range(np.stack(arrays))
            assert batch.shape == (BATCH, CHANNELS, SIZE, SIZE)

        t_peer = measure(peer_run, repeat=max(2, repeat - 2))
        peer_rate = peer_steps / t_peer.median_s
        rows.append(Row(f"peer: Pillow decode of the same {BATCH} JPEGs per step", peer_rate,
                        "batches/s", t_peer, f"{peer_rate * BATCH:.0f} images/s"))
        rows.append(Row("loader / peer", loader_rate / peer_rate, "x"))

    print_table("data layer", rows)
    path = write_results("data", rows, {
        "jpegs": n_jpegs, "jpeg_size": list(CELEBA_WH), "cached_images": n_images,
        "image": [SIZE, SIZE, CHANNELS], "batch": BATCH, "loader_steps": loader_steps,
        "peer_steps": peer_steps})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
