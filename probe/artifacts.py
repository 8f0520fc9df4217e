"""Where every file goes, and how it gets there: atomically (temp file + rename).

Layout under the artifacts root (``--artifacts`` / ``PROBE_ARTIFACTS``, default ``./artifacts``)::

    data/<data-key>/      images.npy, partition.npy, keys.txt, manifest.json, subsets.json
    runs/<run-id>/        config.json, subset.json, model.safetensors, ema.safetensors (its
                          presence marks a finished run), stats.jsonl, samples.png, curves.png,
                          checkpoints/step-XXXXXXX/{model,ema}.safetensors + state.pt
    last-runs.json        the runs the latest `probe train-split` made (`--last`)
    probes/<run-id>/      attention.h5, jacobian.h5, generalization.h5, attribution.h5,
                          samples.h5 / samples.png, and each probe's table of that run
    tables/               tidy .parquet/.csv tables across runs (one per probe, and the
                          cross-probe joins `probe report` builds)
    figures/              .png/.pdf figures drawn from the tables and HDF5 files
    report.md, report.html  `probe report`

Every file name is defined here, once.
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

# data/<key>/
MANIFEST, IMAGES, PARTITION, KEYS, SUBSETS = (
    "manifest.json", "images.npy", "partition.npy", "keys.txt", "subsets.json")
# runs/<id>/
RUN_CONFIG, RUN_SUBSET, RUN_STATS, RUN_SAMPLES, RUN_CURVES = (
    "config.json", "subset.json", "stats.jsonl", "samples.png", "curves.png")
MODEL_WEIGHTS, EMA_WEIGHTS, TRAINING_STATE = "model.safetensors", "ema.safetensors", "state.pt"
CHECKPOINTS, CHECKPOINT_PREFIX = "checkpoints", "step-"
LAST_RUNS = "last-runs.json"
# probes/<id>/: each probe's file and the name of its tidy table (tables/<name>.parquet|csv)
ATTENTION_H5, JACOBIAN_H5, GENERALIZATION_H5, ATTRIBUTION_H5 = (
    "attention.h5", "jacobian.h5", "generalization.h5", "attribution.h5")
SAMPLES_H5, SAMPLES_PNG = "samples.h5", "samples.png"
COMPARE_H5, COMPARE_TABLE = "compare.h5", "compare"
LOCALITY_TABLE, BASIS_TABLE, GENERALIZATION_TABLE, ATTRIBUTION_TABLE = (
    "locality", "basis", "generalization", "attribution")
LOCALITY_GAP_TABLE, HEAD_LOCALITY_TABLE = "locality_gap", "head_locality"
REPORT_MD, REPORT_HTML = "report.md", "report.html"


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

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def probe_dir(self, run_id: str) -> Path:
        return self.root / "probes" / run_id

    def probe_file(self, run_id: str, name: str) -> Path:
        """probes/<run-id>/<name>: one probe's file (or table) of one run."""
        return self.probe_dir(run_id) / name

    def table(self, name: str) -> Path:
        """tables/<name> (without suffix: tables are written as .parquet and .csv)."""
        return self.tables_dir / name

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
