"""`probe models list` against the full-build count it replaced (issue: a 2 s listing).

The listing used to build every preset and run torch's FLOP counter on it; it now counts from
the architecture (`probe.models.counts`). Cases, timed in interleaved rounds in one process:

- `probe models list` as a user runs it: a fresh interpreter (`python -m probe`), all presets;
- the old count of one preset in process: `zoo.build` + `count_parameters` + `macs_per_image`
  (DiT-XL/2, the paper's flagship; DiT-S/2 under --quick);
- the same preset built on the meta device and counted by FlopCounterMode (what
  `probe models show` does), for scale.

The ratio row is the old cost of that one preset over the new cost of the whole listing.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from benchmarks.common import Row, Timing, print_table, quick, write_results
from probe.config import ModelConfig
from probe.models import zoo


def _list_cli() -> None:
    subprocess.run([sys.executable, "-m", "probe", "models", "list"], check=True,
                   stdout=subprocess.DEVNULL)


def _count_by_building(cfg: ModelConfig, device: str | None):
    def count():
        model = zoo.build(cfg, device=device)
        return zoo.count_parameters(model), zoo.macs_per_image(model, cfg)

    return count


def main() -> None:
    arch, rounds = ("dit-s/2", 2) if quick() else ("dit-xl/2", 3)
    cfg = ModelConfig(arch=arch, image_size=32)
    cases = {
        "probe models list (subprocess, every preset)": _list_cli,
        f"old: build + FLOP counter, {arch}": _count_by_building(cfg, None),
        f"meta build + FLOP counter, {arch}": _count_by_building(cfg, "meta"),
    }
    assert _count_by_building(cfg, "meta")() == (zoo.count(cfg).params, zoo.count(cfg).macs)
    for fn in cases.values():  # warm-up: imports, the page cache
        fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, ts in times.items():
        timing = Timing(statistics.median(ts), min(ts), max(ts), rounds)
        rows.append(Row(name, timing.median_s, "s", timing))
    listing, old = (statistics.median(times[name]) for name in list(cases)[:2])
    rows.append(Row(f"old {arch} alone / new whole listing", old / listing, "x",
                    note=f"{len(zoo.PRESETS)} presets listed"))
    print_table(f"probe models list vs counting by building (median of {rounds})", rows)
    write_results("models", rows, {"arch": arch, "rounds": rounds,
                                   "presets": len(zoo.PRESETS)})


if __name__ == "__main__":
    main()
