"""The one driver every probe command runs through: choose and load the runs, validate, plan,
probe each run into its file, build the tidy tables, draw the figures.

    result = run_probe(PROBE, runs, store, cfg, command=..., log=...)

Order of work, so that bad input costs nothing: the configuration is validated (one line),
runs a probe cannot serve are refused (a model trained elsewhere has no training images, and
the probe says which of its metrics need them), every run is planned (sizes, pixels, k,
checkpoints), and only then is anything written. Per run, probes/<run-id>/<file> (resumable)
and probes/<run-id>/<table>; across runs, tables/<table> is upserted (other runs' rows kept);
then probe.report draws the probe's figures from the files. Cross-probe tables are built by
`probe report` (probe.report.joins), never here, so no result depends on the order the probes
ran in.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from probe import locks
from probe.artifacts import Artifacts
from probe.errors import ProbeError
from probe.external_runs import load_model_run
from probe.metrics.tables import upsert, write_table
from probe.probes import attention, attribution, generalization, jacobian, samples
from probe.probes.protocol import Probe
from probe.report import figures as report_figures
from probe.runs import Run, load_run, select_runs

PROBES: dict[str, Probe] = {p.name: p for p in (attention.PROBE, jacobian.PROBE,
                                                 generalization.PROBE, attribution.PROBE,
                                                 samples.PROBE)}


@dataclass
class ProbeResult:
    probe: str
    runs: list  # the Runs probed, in order
    files: list[Path]
    table: pd.DataFrame
    table_path: Path | None
    figures: list[Path] = field(default_factory=list)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_runs(refs, store: Artifacts, *, models=(), diffusers=(), data_config=None,
              train_data: str | None = None, last: bool = False, command: str = "",
              log=_stderr) -> list[Run]:
    """Runs named as directories or ids, plus outside models (`models`: paths or
    probe.external.ModelSpec, any format; `diffusers` is the older name) probed on
    `data_config`'s data set, with `train_data` as their training images when given; with
    neither, every finished run under the artifacts root (or, `last`, the runs the latest
    train-split made), and the choice is logged."""
    refs, specs = list(refs), [*models, *diffusers]
    if not refs and not specs:
        refs = select_runs(store, last)
        log(f"runs: {len(refs)} {'from the latest train-split' if last else 'finished'} "
            f"under {store.runs_dir}: " + ", ".join(p.name for p in refs))
    loaded = [load_run(ref, store) for ref in refs]
    loaded += [load_model_run(spec, data_config, store, command, train_data) for spec in specs]
    runs: list[Run] = []
    seen = set()
    for run in loaded:
        if run.run_id not in seen:
            seen.add(run.run_id)
            runs.append(run)
    return runs


def check_runs(probe: Probe, runs: list[Run], cfg) -> None:
    """Refuse, in one line, runs the probe cannot serve as configured."""
    if not runs:
        raise ProbeError(f"{probe.name}: no runs to probe")
    needs = probe.training_images(cfg)
    if needs:
        without = [r.run_id for r in runs if len(r.train_indices) == 0]
        if without:
            raise ProbeError(f"{probe.name}: {needs} need the model's training images, and "
                             f"{without[0]} has none (a model trained elsewhere)")


def run_probe(probe: Probe | str, runs: list[Run], store: Artifacts, cfg, *, command: str = "",
              log=_stderr, figures: bool = True) -> ProbeResult:
    """Validate, plan, probe, tabulate and draw, in that order (see the module doc)."""
    probe = PROBES[probe] if isinstance(probe, str) else probe
    probe.validate(cfg)
    check_runs(probe, runs, cfg)
    paths = [store.probe_file(run.run_id, probe.filename) for run in runs]
    plans = probe.plan(runs, cfg, paths, log)
    for run, plan, path in zip(runs, plans, paths):
        log(f"{probe.name}: {run.run_id} ({run.arch})")
        with locks.hold(store.lock("probe", f"{run.run_id}-{path.name}"),
                        f"{path} is being written", wait=True, log=log):  # a second one waits
            probe.probe(run, plan, cfg, path, command, log)
    table, table_path = probe.tidy(runs, paths, cfg), None
    if probe.table and len(table):
        for run in runs:
            write_table(table[table["run"] == run.run_id],
                        store.probe_file(run.run_id, probe.table))
        table_path = upsert(store, probe.table, table)
    drawn = report_figures.draw(probe.name, store, [r.run_id for r in runs], cfg) \
        if figures else []
    return ProbeResult(probe.name, runs, paths, table, table_path, drawn)
