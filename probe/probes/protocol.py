"""The one shape every probe has, so one driver (probe.pipeline) runs them all.

A probe is an object with

- `name`: its command (`attention-locality`, ...), `filename`: its file under
  probes/<run-id>/ (probe.artifacts), `table`: its tidy table under tables/;
- `validate(cfg)`: refuse a bad configuration in one line (ProbeError), before any run loads;
- `training_images(cfg)`: which of its metrics, as configured, need the run's training
  images ("" when none do): the driver refuses such a configuration on a run without a
  training subset (a model trained elsewhere) instead of inventing numbers;
- `plan(runs, cfg, paths, log)`: one plan per run, settled and validated before anything is
  written (bad pixels, sizes, k, missing checkpoints: one line); `paths` are the runs' files,
  and plans may refer to each other (pairs compare one run's samples with another's);
- `probe(run, plan, cfg, path, command, log)`: write or finish the run's file at `path`,
  resumably (probe.formats.h5.ResumableH5);
- `tidy(runs, paths, cfg)`: the tidy table of those files (built in probe.metrics).

Figures are not the probe's business: the driver asks probe.report to draw them from the files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from probe.runs import Run

Log = Callable[[str], None]


@runtime_checkable
class Probe(Protocol):
    name: str
    filename: str
    table: str

    def validate(self, cfg: Any) -> None: ...

    def training_images(self, cfg: Any) -> str: ...

    def plan(self, runs: list[Run], cfg: Any, paths: list[Path], log: Log) -> list: ...

    def probe(self, run: Run, plan: Any, cfg: Any, path: Path, command: str,
              log: Log) -> None: ...

    def tidy(self, runs: list[Run], paths: list[Path], cfg: Any) -> pd.DataFrame: ...
