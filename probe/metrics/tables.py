"""Tidy tables on disk: .parquet (typed) and .csv (readable) side by side, written atomically.

Tables under `tables/` accumulate across commands: `upsert` replaces the rows of the runs being
written and keeps every other run's rows, so probing runs one at a time builds one table. The
read-modify-write of an upsert holds the table's lock (`.locks/table-<name>.lock`), so two probes
finishing at once both land their rows.

A table that cannot be read (a damaged .parquet) is named on stderr, set aside as
`<name>.parquet.damaged` and rebuilt from the per-run tables it came from
(`probes/<run-id>/<name>.parquet`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from probe import artifacts, locks
from probe.artifacts import Artifacts


def write_table(df: pd.DataFrame, stem: Path) -> tuple[Path, Path]:
    """Write `stem`.parquet and `stem`.csv atomically."""
    stem = Path(stem)
    parquet, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    with artifacts.atomic_path(parquet) as tmp:
        df.to_parquet(tmp, index=False)
    with artifacts.atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    return parquet, csv


def _lock(stem: Path):
    stem = Path(stem)
    return locks.hold(artifacts.lock_path(stem.parent.parent, "table", stem.name),
                      f"table {stem.name} is being written", wait=True,
                      log=lambda msg: print(msg, file=sys.stderr))


def _rebuild(stem: Path, exc: Exception) -> pd.DataFrame | None:
    """Set a damaged table aside and rebuild it from the per-run tables of the same name under
    probes/ (None when there are none: a cross-probe join, rebuilt by `probe report`)."""
    parquet = stem.with_suffix(".parquet")
    aside = parquet.with_name(parquet.name + ".damaged")
    parquet.replace(aside)
    parts = []
    for path in sorted((stem.parent.parent / "probes").glob(f"*/{stem.name}.parquet")):
        try:
            parts.append(pd.read_parquet(path))
        except Exception:  # noqa: BLE001 - pyarrow raises many types: skip that run's table
            print(f"warning: skipping damaged {path}", file=sys.stderr)
    detail = " ".join(str(exc).split())[:120]
    print(f"warning: {parquet} is damaged ({type(exc).__name__}: {detail}); set aside as "
          f"{aside.name}, rebuilt from {len(parts)} per-run table(s)", file=sys.stderr)
    if not parts:
        return None
    df = pd.concat(parts, ignore_index=True)
    write_table(df, stem)
    return df


def _read(stem: Path) -> pd.DataFrame | None:
    parquet = Path(stem).with_suffix(".parquet")
    if not parquet.is_file():
        return None
    try:
        return pd.read_parquet(parquet)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...: a damaged file
        return _rebuild(Path(stem), exc)


def read_table(stem: Path) -> pd.DataFrame | None:
    """A table, or None when it was never written; a damaged one is rebuilt (module doc)."""
    stem = Path(stem)
    parquet = stem.with_suffix(".parquet")
    if not parquet.is_file():
        return None
    try:
        return pd.read_parquet(parquet)
    except Exception:  # noqa: BLE001 - repaired under the table's lock
        with _lock(stem):
            return _read(stem)


def upsert(store: Artifacts, name: str, df: pd.DataFrame, key: str = "run") -> Path:
    """Merge `df` into tables/<name>: rows whose `key` appears in `df` are replaced."""
    stem = store.tables_dir / name
    with _lock(stem):
        old = _read(stem)
        if old is not None and key in old.columns:
            old = old[~old[key].isin(df[key].unique())]
            df = pd.concat([old, df], ignore_index=True) if len(old) else df
        write_table(df, stem)
    return stem.with_suffix(".parquet")
