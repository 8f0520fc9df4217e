"""Where every file goes, and how it gets there: atomically (temp file + rename).

Layout under the artifacts root (``--artifacts`` / ``PROBE_ARTIFACTS``, default ``./artifacts``)::

    data/<data-key>/      images.npy, partition.npy, keys.txt, manifest.json, subsets.json
    runs/<run-id>/        config.json, model/ema.safetensors, state.pt, stats.jsonl, samples.png
    probes/<run-id>/      attention.h5, jacobian.h5, generalization.h5, attribution.h5
    tables/               tidy .parquet/.csv tables across runs
    figures/              .png/.pdf figures drawn from the tables and HDF5 files
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "artifacts"
ENV_ROOT = "PROBE_ARTIFACTS"


@dataclass(frozen=True)
class Artifacts:
    """Paths of everything probe writes, below one root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> Artifacts:
        return cls(Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT))

    def data_dir(self, key: str) -> Path:
        return self.root / "data" / key

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def probe_dir(self, run_id: str) -> Path:
        return self.root / "probes" / run_id

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A reader never sees a half-written file, and a killed writer leaves the old file intact.
    The temporary name keeps the final suffix so libraries that look at it (numpy, h5py) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    """Deterministic JSON (sorted keys, fixed indent): same object -> byte-identical file."""
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_array(array: np.ndarray, rows_per_chunk: int = 4096) -> str:
    """Hash of an array's shape, dtype and contents, streamed so memory-mapped sets stay on disk."""
    h = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
    for start in range(0, max(len(array), 1), rows_per_chunk):
        h.update(np.ascontiguousarray(array[start : start + rows_per_chunk]).tobytes())
    return h.hexdigest()


def sha256_json(obj) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True).encode())
