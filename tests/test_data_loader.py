"""The step-indexed batch loader over a memory-mapped uint8 array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.data.loader import StepBatches, gather, to_model_range, to_uint8


@pytest.fixture
def data_mmap(tmp_path) -> np.ndarray:
    """50 random 6x6x3 uint8 images, memory-mapped from disk like a prepared cache."""
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    return np.load(tmp_path / "images.npy", mmap_mode="r")


def test_batch_shape_range_and_values(data_mmap):
    idx = np.arange(3, 40)
    loader = StepBatches(data_mmap, idx, batch_size=8, seed=1)
    x = loader.batch(4)
    assert x.shape == (8, 3, 6, 6) and x.dtype == torch.float32
    assert x.is_contiguous()
    assert x.min() >= -1 and x.max() <= 1
    want = torch.from_numpy(np.asarray(data_mmap[loader.indices_at(4)])).permute(0, 3, 1, 2)
    torch.testing.assert_close(x, want.float() / 127.5 - 1)


def test_model_range_round_trip_and_extremes():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    x = to_model_range(pixels)
    assert x.shape == (1, 3, 16, 16)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    np.testing.assert_array_equal(to_uint8(x), pixels)
    single = to_model_range(pixels[0])  # one image: [H, W, C] -> [C, H, W]
    assert single.shape == (3, 16, 16)
    assert to_uint8(torch.full((1, 1, 2, 2), 3.0)).max() == 255  # clamped, not wrapped


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), batch=st.integers(1, 70), seed=st.integers(0, 2**31),
       steps=st.integers(1, 12))
def test_every_image_once_per_epoch(n, batch, seed, steps):
    images = np.zeros((50, 2, 2, 1), np.uint8)  # only the indices matter here
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    loader = StepBatches(images, idx, batch_size=batch, seed=seed)
    stream = np.concatenate([loader.indices_at(s) for s in range(steps)])
    assert len(stream) == steps * batch
    for start in range(0, len(stream) - n + 1, n):  # each full epoch is a permutation of idx
        np.testing.assert_array_equal(np.sort(stream[start : start + n]), np.sort(idx))


def test_tiny_subset_is_tiled_within_one_batch(data_mmap):
    idx = np.array([4, 9, 17])
    loader = StepBatches(data_mmap, idx, batch_size=64, seed=0)
    got = loader.indices_at(0)
    assert len(got) == 64
    for start in range(0, 63, 3):
        assert sorted(got[start : start + 3]) == [4, 9, 17]
    assert sorted(got[63:]) in ([4], [9], [17])
    x = loader.batch(0)
    assert x.shape == (64, 3, 6, 6)


def test_batches_are_a_pure_function_of_seed_and_step(data_mmap):
    idx = np.arange(0, 50, 2)
    uninterrupted = StepBatches(data_mmap, idx, batch_size=7, seed=5)
    run = [uninterrupted.batch(s) for s in range(20)]
    resumed = StepBatches(data_mmap, idx, batch_size=7, seed=5)  # fresh object, starts at 13
    for s in range(13, 20):
        torch.testing.assert_close(resumed.batch(s), run[s], rtol=0, atol=0)
    for s in (19, 2, 11, 0):  # any order, any repeat
        torch.testing.assert_close(uninterrupted.batch(s), run[s], rtol=0, atol=0)
    # Each epoch is freshly shuffled (25 images, batch 7: epoch 1 starts 4 images into step 3).
    stream = np.concatenate([uninterrupted.indices_at(s) for s in range(8)])
    assert not np.array_equal(stream[:25], stream[25:50])
    other_seed = StepBatches(data_mmap, idx, batch_size=7, seed=6)
    assert not np.array_equal(other_seed.indices_at(0), uninterrupted.indices_at(0))
    assert not np.array_equal(uninterrupted.indices_at(0), uninterrupted.indices_at(1))


def test_ranks_split_the_global_batch(data_mmap):
    idx = np.arange(50)
    whole = StepBatches(data_mmap, idx, batch_size=12, seed=2)
    ranks = [StepBatches(data_mmap, idx, batch_size=4, seed=2, rank=r, world=3) for r in range(3)]
    for step in (0, 3, 9):
        np.testing.assert_array_equal(np.concatenate([r.indices_at(step) for r in ranks]),
                                      whole.indices_at(step))


def test_gather_keeps_the_requested_order(data_mmap):
    order = np.array([30, 2, 30, 11, 0])
    np.testing.assert_array_equal(gather(data_mmap, order), np.asarray(data_mmap)[order])


@pytest.mark.parametrize("kwargs", [dict(indices=[]), dict(batch_size=0),
                                    dict(indices=[0, 50]), dict(rank=2, world=2)])
def test_bad_loader_arguments(data_mmap, kwargs):
    args = dict(indices=[0, 1, 2], batch_size=4) | kwargs
    with pytest.raises(ValueError):
        StepBatches(data_mmap, np.asarray(args.pop("indices"), np.int64), **args)
