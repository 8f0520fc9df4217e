"""Tidy tables on disk: .parquet (typed) and .csv (readable) side by side, written atomically.

Tables under `tables/` accumulate across commands: `upsert` replaces the rows of the runs being
written and keeps every other run's rows, so probing runs one at a time builds one table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probe import artifacts
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


def read_table(stem: Path) -> pd.DataFrame | None:
    parquet = Path(stem).with_suffix(".parquet")
    return pd.read_parquet(parquet) if parquet.is_file() else None


def upsert(store: Artifacts, name: str, df: pd.DataFrame, key: str = "run") -> Path:
    """Merge `df` into tables/<name>: rows whose `key` appears in `df` are replaced."""
    stem = store.tables_dir / name
    old = read_table(stem)
    if old is not None and key in old.columns:
        old = old[~old[key].isin(df[key].unique())]
        df = pd.concat([old, df], ignore_index=True) if len(old) else df
    write_table(df, stem)
    return stem.with_suffix(".parquet")
