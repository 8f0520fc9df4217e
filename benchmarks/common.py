"""Small helpers shared by the benchmarks: a median timer, a result table, a JSON record."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from probe.artifacts import Artifacts, write_json

QUICK_ENV = "PROBE_BENCH_QUICK"


def quick() -> bool:
    """True under `python -m benchmarks --quick`: benchmarks shrink their sizes and repeats."""
    return os.environ.get(QUICK_ENV) == "1"


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int


def measure(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeat` times; the median wall time is the figure."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), repeat)


@dataclass(frozen=True)
class Row:
    case: str  # what ran
    value: float  # the figure (higher is better unless the unit says seconds)
    unit: str  # e.g. "images/s", "batches/s", "x"
    timing: Timing | None = None
    note: str = ""


def print_table(title: str, rows: list[Row]) -> None:
    width = max(len(r.case) for r in rows)
    print(f"\n{title}")
    print(f"{'case':<{width}}  {'value':>12}  {'unit':<10}  {'spread (min..max s)':<22}  note")
    for r in rows:
        spread = f"{r.timing.min_s:.4g}..{r.timing.max_s:.4g}" if r.timing else ""
        print(f"{r.case:<{width}}  {r.value:>12.4g}  {r.unit:<10}  {spread:<22}  {r.note}")


def environment() -> dict:
    import numpy
    import PIL
    import torch

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "numpy": numpy.__version__, "torch": torch.__version__,
        "pillow": PIL.__version__, "torch_threads": torch.get_num_threads(), "quick": quick(),
    }


def write_results(name: str, rows: list[Row], params: dict | None = None,
                  store: Artifacts | None = None) -> Path:
    """Record the rows as <artifacts>/benchmarks/<name>.json (atomic, deterministic layout)."""
    store = store or Artifacts.at()
    path = store.root / "benchmarks" / f"{name}.json"
    write_json(path, {"benchmark": name, "environment": environment(), "params": params or {},
                      "results": [asdict(r) for r in rows]})
    return path
