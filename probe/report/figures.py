"""Which figures each probe's files make: `draw(probe name, store, run ids, cfg)`, called by the
driver (probe.pipeline) after a probe and by `probe report`. Every figure is drawn from files.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from probe import artifacts
from probe.artifacts import Artifacts
from probe.data.loader import to_uint8
from probe.formats.images import save_grid
from probe.formats.samples import read_samples


def _attention(store: Artifacts, run_ids, cfg) -> list[Path]:
    from probe.report.attention_figures import attention_locality_figures

    paths = [store.probe_file(r, artifacts.ATTENTION_H5) for r in run_ids]
    return attention_locality_figures(store, [p for p in paths if p.is_file()],
                                      getattr(cfg, "queries", ("center",)))


def _jacobian(store: Artifacts, run_ids, cfg) -> list[Path]:
    from probe.report import jacobian_figures

    return jacobian_figures.draw(store, list(run_ids))


def _generalization(store: Artifacts, run_ids, cfg) -> list[Path]:
    from probe.report.generalization_figures import draw_all

    return draw_all(store, list(run_ids))


def _attribution(store: Artifacts, run_ids, cfg) -> list[Path]:
    from probe.report import attribution_figures

    return attribution_figures.draw(store, list(run_ids))


def _compare(store: Artifacts, run_ids, cfg) -> list[Path]:
    from probe.report import compare_figures

    return compare_figures.draw(store, list(run_ids))


def _samples(store: Artifacts, run_ids, cfg) -> list[Path]:
    """probes/<run>/samples.png: the grid of the run's samples.h5."""
    out = []
    for run_id in run_ids:
        path = store.probe_file(run_id, artifacts.SAMPLES_H5)
        if not path.is_file():
            continue
        with h5py.File(path, "r") as f:
            images = read_samples(f)
        if images is not None:
            out.append(save_grid(store.probe_file(run_id, artifacts.SAMPLES_PNG),
                                 to_uint8(images)))
    return out


DRAWERS = {"attention-locality": _attention, "jacobian-basis": _jacobian,
           "generalization": _generalization, "attribution": _attribution, "sample": _samples,
           "compare": _compare}


def draw(probe: str, store: Artifacts, run_ids, cfg=None) -> list[Path]:
    """Every figure of probe `probe` for these runs."""
    return [p for p in DRAWERS[probe](store, run_ids, cfg) if p is not None]
