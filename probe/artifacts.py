"""Where every file goes, and how it gets there: atomically (temp file + rename).

Layout under the artifacts root (``--artifacts`` / ``PROBE_ARTIFACTS``, default ``./artifacts``)::

    data/<data-key>/      images.npy, partition.npy, keys.txt, manifest.json, subsets.json
    runs/<run-id>/        config.json, subset.json, model.safetensors, ema.safetensors (its
                          presence marks a finished run), stats.jsonl, samples.png, curves.png,
                          checkpoints/step-XXXXXXX/{model,ema}.safetensors + state.pt
    last-runs.json        the runs the latest `probe train-split` made (`--last`)
    .locks/               one lock file per run being trained, probe file or table being written
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
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe.errors import ProbeError

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
LOCALITY_TABLE, BASIS_TABLE, GENERALIZATION_TABLE, ATTRIBUTION_TABLE = (
    "locality", "basis", "generalization", "attribution")
LOCALITY_GAP_TABLE, HEAD_LOCALITY_TABLE = "locality_gap", "head_locality"
REPORT_MD, REPORT_HTML = "report.md", "report.html"
LOCKS = ".locks"  # lock files (probe.locks): runs, probe files, tables


def _plain(run_id: str) -> str:
    """A run id as a single path component: never "", ".", ".." or a path."""
    if run_id in ("", ".", "..") or "/" in run_id or "\0" in run_id:
        raise ProbeError(f"not a run id: {run_id!r}")
    return run_id


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
        return self.root / "runs" / _plain(run_id)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def probe_dir(self, run_id: str) -> Path:
        return self.root / "probes" / _plain(run_id)

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

    def lock(self, kind: str, name: str) -> Path:
        """.locks/<kind>-<name>.lock: the lock file of one run, probe file or table
        (probe.locks), kept apart so that no output folder holds a file it did not make."""
        return lock_path(self.root, kind, name)


def lock_path(root: str | os.PathLike, kind: str, name: str) -> Path:
    return Path(root) / LOCKS / f"{kind}-{name}.lock"


# Temporary files and directories carry their owner: ".<name>.~<pid>@<host>~<random><suffix>",
# so a later process can tell a dead writer's leftovers (kill -9, power loss) from a live one's.
_HOST = socket.gethostname()
_OWNED = re.compile(r"\.~(\d+)@([^~/]+)~")


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary files for `name` (see `remove_stale_temps`)."""
    return f".{name}.~{os.getpid()}@{_HOST}~"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and directories in `directory` whose writer (a process on
    this host) is dead; returns what was removed. Other hosts' files are left alone: their pids
    mean nothing here."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED.search(entry.name) if entry.name.startswith(".") else None
        if not match or match.group(2) != _HOST or _alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by mkstemp / mkdtemp (0600 / 0700) the mode the umask asks for."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A temporary directory beside `parent/name`, owned (for `remove_stale_temps`) and with the
    umask's mode."""
    remove_stale_temps(parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(name), dir=parent))
    share(tmp, directory=True)
    return tmp


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free on the file system holding `path` (its nearest existing ancestor)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def check_space(path: str | os.PathLike, nbytes: int, what: str | None = None) -> None:
    """One line instead of a full disk half-way through: refuse a write of `nbytes` to `path`
    when the file system has less free."""
    free = free_bytes(path)
    if free is not None and nbytes > free:
        raise ProbeError(f"no space left on device while writing {what or path}; "
                         f"{_mb(nbytes)} needed, {_mb(free)} free")


def reserve(path: str | os.PathLike, what: str | os.PathLike | None = None) -> None:
    """Allocate the whole of a (sparse) file now, so that writing it through a memory map later
    cannot die of SIGBUS on a full disk: the shortage is this one-line error instead."""
    fd = os.open(path, os.O_RDWR)
    try:
        nbytes = os.fstat(fd).st_size
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            free = free_bytes(Path(path).parent) or 0
            raise ProbeError(f"no space left on device while writing {what or path}; "
                             f"{_mb(nbytes)} needed, {_mb(free)} free") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A reader never sees a half-written file, and a killed writer leaves the old file intact;
    its temporary file is removed by the next atomic write into that directory. The temporary
    name keeps the final suffix so libraries that look at it (numpy, h5py) behave, and the file
    gets the mode the umask asks for (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(
        prefix=temp_prefix(path.name), suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        share(tmp_path)
        yield tmp_path
        share(tmp_path)  # again: some writers (safetensors) replace the file with a 0600 one
        os.replace(tmp_path, path)
    except OSError as exc:  # name the file a full disk stopped (pyarrow, h5py name none)
        if exc.errno == errno.ENOSPC or "No space left" in str(exc):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise
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
    """A JSON file's value; a damaged file (not JSON, empty, not UTF-8, absurdly nested) is a
    one-line ProbeError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        detail = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ProbeError(f"{path} is damaged: not valid JSON ({detail})") from None


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
