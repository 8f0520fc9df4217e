"""What every probe shares: fixed seeded inputs, and resumable, atomic HDF5 output.

Inputs: the same images and the same noise per (image, sigma) for every run of a data set, so
runs (N, split, architecture) are compared on identical inputs.

Output: `ResumableH5` writes into `<name>.partial` beside the final file; each finished unit of
work (an image x sigma, a layer, ...) is a group marked `complete`. A killed probe leaves only
the partial file; rerunning skips the complete groups and, when all are done, renames the
partial onto the final name, so the final file is never half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from probe.config import PROBE_SOURCES
from probe.errors import ProbeError

SOURCES = PROBE_SOURCES


def probe_indices(run, count: int, source: str = "test", seed: int = 0) -> np.ndarray:
    """`count` data-set rows from the run's held-out set or its own training subset, chosen by a
    seeded permutation (the test choice is the same for every run of the data set)."""
    if source not in SOURCES:
        raise ProbeError(f"--from must be test or train, got {source!r}")
    pool = run.test_indices if source == "test" else run.train_indices
    if len(pool) == 0:
        raise ProbeError(f"{run.run_id} has no {source} images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    return pool[order[: min(count, len(pool))]]


def fixed_noise(shape: tuple[int, ...], seed: int, image: int, sigma_index: int
                ) -> torch.Tensor:
    """Standard normal noise that depends only on (seed, data-set row, sigma index)."""
    generator = torch.Generator().manual_seed(hash((seed, int(image), int(sigma_index)))
                                              % (2**63))
    return torch.randn(shape, generator=generator)


def parse_sigmas(text: str) -> tuple[float, ...]:
    try:
        sigmas = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ProbeError(f"--sigmas must be comma-separated numbers, got {text!r}") from None
    if not sigmas:
        raise ProbeError("--sigmas is empty")
    check_inputs(sigmas)
    return sigmas


def check_inputs(sigmas, source: str = "test") -> None:
    """The checks every probe's options share: positive, finite noise levels; a known source."""
    bad = [s for s in sigmas if not (s > 0 and np.isfinite(s))]
    if not sigmas or bad:
        raise ProbeError(f"noise levels must be positive, got {bad[0] if bad else 'none'}")
    if source not in PROBE_SOURCES:
        raise ProbeError(f"--from must be test or train, got {source!r}")


def _attr(value):
    if isinstance(value, dict | list | tuple) and not (
            isinstance(value, list | tuple) and value and
            all(isinstance(v, int | float) for v in value)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


class ResumableH5:
    """`with ResumableH5(path, attrs) as out:` ... `if out.done(key): continue` ...
    `g = out.begin(key)`; write datasets into g; `out.complete(g)`.

    `attrs` (provenance: run id, checkpoint hash, command, options) go on the root; a partial
    file written with other attrs is discarded instead of resumed. The final rename happens when
    the block exits without an exception.
    """

    def __init__(self, path: str | os.PathLike, attrs: dict, identity: dict | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = {k: _attr(v) for k, v in attrs.items()}
        # Only the options that change results decide whether a partial file can be resumed.
        self.identity = json.dumps(identity if identity is not None else attrs, sort_keys=True,
                                   default=str)
        self.file: h5py.File | None = None

    def __enter__(self) -> ResumableH5:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            try:
                with h5py.File(self.partial, "r") as f:
                    same = f.attrs.get("_identity") == self.identity
            except OSError:  # killed mid-write so badly HDF5 cannot open it: start again
                same = False
            if not same:
                self.partial.unlink()
        self.file = h5py.File(self.partial, "a")
        self.file.attrs["_identity"] = self.identity
        for key, value in self.attrs.items():
            self.file.attrs[key] = value
        return self

    def done(self, key: str) -> bool:
        return key in self.file and bool(self.file[key].attrs.get("complete", False))

    def begin(self, key: str) -> h5py.Group:
        if key in self.file:
            del self.file[key]
        return self.file.require_group(key)

    def complete(self, group: h5py.Group) -> None:
        group.attrs["complete"] = True
        self.file.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
