"""One seeding scheme for every random draw a probe or sampler makes: named streams of
`numpy.random.SeedSequence`.

A draw is named by (seed, keys..., stream): the user's seed, what it is for (a data-set row and
a noise level, a sample index, ...) and a stream id from `STREAMS`. SeedSequence hashes that
entropy into well-mixed, platform-independent state, so

- the noise of (image row, sigma index) is the same whatever batch, device or run draws it, so
  runs are compared on identical inputs;
- two streams never collide by accident (Python's `hash()`, used before, maps -1 and -2 to the
  same value and is not stable across versions of the interpreter).

`SCHEME` names this scheme. Resumable probe files store it with the settings that decide
whether a partial file may be continued, so a file written under another scheme is started
again instead of being mixed with draws of this one.
"""

from __future__ import annotations

import numpy as np
import torch

from probe.errors import ProbeError

SCHEME = "seedsequence-v2"  # v1: Python hash((seed, row, sigma_index)) for the probe noise

# stream id of each use; samplers' ids 0 and 1 predate the others (their draws are unchanged)
STREAMS = {
    "sample-initial": 0,  # a sample's initial noise, keys (sample index,)
    "sample-injected": 1,  # noise a stochastic sampler injects, keys (sample index,)
    "probe-noise": 2,  # the fixed noise of a probe image, keys (data-set row, sigma index)
    "probe-images": 3,  # which images a probe takes, keys ()
    "influence-sample": 4,  # initial noise of an influence sample, keys (sample index,)
    "influence-loss": 5,  # the one noise draw every influence loss shares, keys ()
    "recalibrate": 6,  # the noise of the training losses that re-estimate EMA norm statistics
    "denoise": 13,  # noise `probe denoise` adds to its input images, keys (image index,)
    "fid-digits": 14,  # the fid-digits network: keys (0,) initial weights, (1,) its batches
}


def entropy(seed: int, stream: str, *keys: int) -> list[int]:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}")
    values = [int(seed), *(int(k) for k in keys)]
    if min(values) < 0:
        raise ProbeError(f"seeds must be non-negative integers, got {int(seed)}")
    return [*values, STREAMS[stream]]


def state(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit integer seed for the stream (torch generators take one)."""
    words = np.random.SeedSequence(entropy(seed, stream, *keys)).generate_state(1, np.uint64)
    return int(words[0]) % (2**63)


def torch_generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(state(seed, stream, *keys))


def numpy_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy(seed, stream, *keys)))


def normal(shape: tuple[int, ...], seed: int, stream: str, *keys: int) -> torch.Tensor:
    """Standard normal float32 noise of `shape` from one named stream."""
    return torch.randn(shape, generator=torch_generator(seed, stream, *keys))


def fixed_noise(shape: tuple[int, ...], seed: int, image: int, sigma_index: int
                ) -> torch.Tensor:
    """The noise of probe image `image` (a data-set row) at noise level `sigma_index`."""
    return normal(shape, seed, "probe-noise", image, sigma_index)
