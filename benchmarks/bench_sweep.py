"""Scale-out on this machine, each figure against its peer measured beside it:

1. sweep throughput: four small runs as `probe sweep --jobs 2 --threads-per-job 1` against the
   same four runs trained one after another by one process with 2 threads (images trained per
   second of wall time over the whole sweep, process start-up included), as a ratio;
2. DDP overhead: seconds per training step of `torchrun --nproc_per_node 2` (gloo, one thread
   per rank) against one process with 2 threads at the same global batch, from the steady-state
   images/s that training logs (start-up excluded).

    python -m benchmarks sweep          # writes artifacts/benchmarks/sweep.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, print_table, quick, write_results

REPO = Path(__file__).resolve().parents[1]


def _env(threads: int, root: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    if root is not None:
        env["PROBE_ARTIFACTS"] = str(root)
    return env


def _run(cmd, env) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    steps, batch = (20, 16) if quick() else (60, 32)
    fixed = {"dataset": "digits", "size": 8, "arch": "dit-tiny/4", "steps": steps,
             "batch": batch, "sample-grid": 0, "checkpoint-every": steps}
    flags = [a for k, v in fixed.items() for a in (f"--{k}", str(v))]
    rows, params = [], {**fixed, "runs": 4}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = tmp / "warm"  # the data set prepared once, copied: training alone is timed
        _run([sys.executable, "-m", "probe", "--artifacts", warm, "data", "prepare",
              "--dataset", "digits", "--size", "8"], _env(1))
        sweep = tmp / "grid.toml"
        sweep.write_text('[grid]\nn = [10, 20]\nsplit = ["a", "b"]\n[fixed]\n' + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in fixed.items()))
        images = 4 * steps * batch
        for root in (tmp / "pool", tmp / "seq", tmp / "seq1"):
            shutil.copytree(warm / "data", root / "data")
        pool_s = _run([sys.executable, "-m", "probe", "--artifacts", tmp / "pool", "sweep",
                       sweep, "--jobs", 2, "--threads-per-job", 1], _env(1))
        seq_s = _run([sys.executable, "-m", "probe", "--artifacts", tmp / "seq", "train-split",
                      "--n", 10, "--n", 20, "--split", "both", *flags], _env(2))
        seq1_s = _run([sys.executable, "-m", "probe", "--artifacts", tmp / "seq1",
                       "train-split", "--n", 10, "--n", 20, "--split", "both", *flags], _env(1))
        rows += [Row("sweep --jobs 2 --threads-per-job 1", images / pool_s, "images/s"),
                 Row("sequential, 1 process x 2 threads", images / seq_s, "images/s"),
                 Row("sequential, 1 process x 1 thread", images / seq1_s, "images/s"),
                 Row("pool / sequential (2 threads)", seq_s / pool_s, "x",
                     note="start-up (torch import, planning) included"),
                 Row("pool / sequential (1 thread)", seq1_s / pool_s, "x",
                     note="the ideal is 2 on 2 idle cores")]

        one_flags = [*flags, "--n", 20, "--log-every", steps // 2]
        for name, cmd, threads in (
                ("1 process x 2 threads", [sys.executable, "-m", "probe", "train-split"], 2),
                ("1 process x 1 thread", [sys.executable, "-m", "probe", "train-split"], 1),
                ("torchrun 2 ranks x 1 thread (gloo)",
                 [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc_per_node", 2, "-m", "probe", "--", "train-split"], 1)):
            root = tmp / name.replace(" ", "_")
            shutil.copytree(warm / "data", root / "data")
            _run([*cmd, *one_flags], _env(threads, root))
            (run_dir,) = (root / "runs").iterdir()
            last = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
            rows.append(Row(f"step time, {name}", 1e3 * batch / last["images_per_s"],
                            "ms/step", note=f"global batch {batch}, steady state"))
        single2, single, ddp = rows[-3].value, rows[-2].value, rows[-1].value
        rows.append(Row("DDP step / single step (2 threads)", ddp / single2, "x"))
        rows.append(Row("DDP step / single step (1 thread)", ddp / single, "x",
                        note=f"{ddp - single / 2:+.1f} ms/step against perfect halving"))
    print_table("Sweeps and DDP on this machine", rows)
    write_results("sweep", rows, params)


if __name__ == "__main__":
    main()
