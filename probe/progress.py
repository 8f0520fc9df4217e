"""Training progress on stderr: a tqdm bar on a terminal, whole plain lines anywhere else.

A bar redraws itself with carriage returns. Written to a file or a pipe (CI logs, `2>&1 | tee`)
the redraws become one unreadable line, and whatever is printed next (`run: PATH` on stdout)
lands inside it. So when the stream is not a TTY, each report is one line of its own,

    RUN_ID: step 300/3000 (10%), loss 0.0412, 152 img/s

printed at the first reported step at or past each tenth of the run. The training loop reports
at its `--log-every` steps, so lines come every ~10 % of the run, or every --log-every steps when
that is coarser: at most ten lines per run however long it is, each holding figures that
stats.jsonl holds too (the loss of that step, images/s since the previous report).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TextIO

Update = Callable[..., None]  # update(step, loss=None, images_per_s=None); update(None) closes


def reporter(enabled: bool, start: int, total: int, name: str,
             stream: TextIO | None = None) -> Update:
    """An update function for a run of `total` steps resuming at `start`."""
    stream = stream or sys.stderr
    if not enabled:
        return lambda *args, **kwargs: None
    if stream.isatty():
        return _bar(start, total, name, stream)
    return _lines(start, total, name, stream)


def _bar(start: int, total: int, name: str, stream: TextIO) -> Update:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc=name[:40], leave=False, file=stream,
               mininterval=1.0, dynamic_ncols=True)
    last = [start]

    def update(step, loss=None, images_per_s=None):
        if step is None:
            bar.close()
            return
        bar.update(step - last[0])
        last[0] = step
        if loss is not None and math.isfinite(loss):
            bar.set_postfix(loss=f"{loss:.4f}")

    return update


def tenths(total: int) -> list[int]:
    """The steps that end each tenth of a run: ceil(k * total / 10), k = 1..10 (distinct)."""
    return sorted({-(-k * total // 10) for k in range(1, 11)})


def _lines(start: int, total: int, name: str, stream: TextIO) -> Update:
    marks = [m for m in tenths(total) if m > start]

    def update(step, loss=None, images_per_s=None):
        if step is None or not marks or step < marks[0]:
            return
        while marks and marks[0] <= step:
            marks.pop(0)
        parts = [f"{name}: step {step}/{total} ({100 * step // total}%)"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if images_per_s is not None:
            parts.append(f"{images_per_s:.0f} img/s")
        print(", ".join(parts), file=stream, flush=True)

    return update
