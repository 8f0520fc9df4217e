"""Tables that join two probes' tables, built by `probe report` from whatever tables exist, so
their result never depends on the order in which the probes ran.

- tables/locality_gap: Spearman correlation across runs between a layer's attention locality
  (tables/locality) and the PSNR gap (tables/generalization), per architecture, layer, metric
  and noise level (probe.metrics.locality.gap_correlation);
- tables/head_locality: the head-importance rows of tables/attribution with that head's
  attention locality as `locality_<metric>` columns (probe.metrics.attribution.join_locality).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probe import artifacts
from probe.artifacts import Artifacts
from probe.metrics.attribution import join_locality
from probe.metrics.locality import gap_correlation
from probe.metrics.tables import read_table, write_table


def locality_gap(store: Artifacts) -> pd.DataFrame | None:
    locality = read_table(store.table(artifacts.LOCALITY_TABLE))
    generalization = read_table(store.table(artifacts.GENERALIZATION_TABLE))
    if locality is None or generalization is None:
        return None
    if not {"run", "sigma", "metric", "value"} <= set(generalization.columns):
        return None
    return gap_correlation(locality, generalization)


def head_locality(store: Artifacts, run_ids=None) -> pd.DataFrame | None:
    attribution = read_table(store.table(artifacts.ATTRIBUTION_TABLE))
    locality = read_table(store.table(artifacts.LOCALITY_TABLE))
    if attribution is None or locality is None:
        return None
    heads = attribution[attribution["metric"] == "head_importance"]
    if run_ids is not None:
        heads = heads[heads["run"].isin(list(run_ids))]
    joined = join_locality(heads, locality)
    if not any(c.startswith("locality_") for c in joined.columns):
        return None
    return joined


JOINS = {artifacts.LOCALITY_GAP_TABLE: locality_gap,
         artifacts.HEAD_LOCALITY_TABLE: head_locality}


def build_joins(store: Artifacts) -> dict[str, Path]:
    """Write every join whose source tables exist; returns {name: parquet path}."""
    written = {}
    for name, build in JOINS.items():
        table = build(store)
        if table is not None and len(table):
            written[name] = write_table(table, store.table(name))[0]
    return written
