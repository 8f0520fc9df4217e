"""The file of `probe generalization`: probes/<run-id>/generalization.h5 (each group a
resumable unit, see probe.formats.h5.ResumableH5).

    psnr/                 sigmas [S]; train, test float [S, images] denoising PSNR on fixed
                          images of the run's training subset and of the held-out set (fixed
                          noise per (image, sigma)); train_rows, test_rows (data-set rows)
    samples/              probe.formats.samples: images drawn from the noise of (seed, i)
    neighbours/           each sample's nearest training images: l2_rows, l2_distances (up to
                          50 for Carlini et al.'s ratio; rows are data-set rows), cosine_rows,
                          cosine_similarities, nearest_image (uint8 [n, H, W, C], the
                          l2-nearest), nn_ratio, carlini_ratio; and contrast-robust, on images
                          normalised images (probe.metrics.memorization; by the data set's
                          mean image `mean_image` [C, H, W], from its held-out rows):
                          normalised_rows, normalised_cosines [n, 2],
                          nearest_image_normalised, nn_ratio_normalised; attr mean_removed
    quality/<sha16>/      attrs fid, kid, kid_std, precision, recall, extractor, n_real, n_fake
                          against held-out images, per feature extractor (its file's sha256)
    pairs/<other-run-id>/ cosine, normalised [n]: this run's sample i against the other
                          run's sample i (Kadkhodaie et al.'s same-noise reproducibility; raw,
                          and between normalised images); attrs other_split, other_n

Root attrs: the run's provenance, command, config, sample_sigmas.
"""

from __future__ import annotations

PSNR, SAMPLES, NEIGHBOURS, QUALITY, PAIRS = "psnr", "samples", "neighbours", "quality", "pairs"
LAYOUT = 2  # 2: normalised neighbours and pair cosines (a file of layout 1 is redone)
PSNR_SOURCES = ("train", "test")


def quality_key(weights_sha256: str) -> str:
    return f"{QUALITY}/{weights_sha256[:16]}"


def pair_key(other_run_id: str) -> str:
    return f"{PAIRS}/{other_run_id}"
