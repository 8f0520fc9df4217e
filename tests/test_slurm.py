"""SLURM for real: a one-node cluster on localhost (tests/slurm_cluster.py), a small sweep
submitted through submitit as a job array, one job preempted mid-run (SIGTERM then submitit's
USR2, as `scancel --signal` delivers them), requeued by submitit and resumed from its last
checkpoint; the sweep finishes with weights identical to a local run. Where the packages or the
daemons cannot be had, the test skips with the reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import Unavailable, local_cluster
from tests.test_sweep import REPO, same_weights

SWEEP = """
[grid]
n = [10]
split = ["a", "b"]
[fixed]
dataset = "digits"
size = 8
arch = "dit-tiny/4"
steps = 60
batch = 8
checkpoint-every = 10
sample-grid = 0
[slurm]
time = 10
threads_per_job = 1
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit)")
    directory = Path(f"/tmp/probe-slurm-{os.getpid()}")  # short: slurmd's socket paths
    try:
        with local_cluster(directory) as env:
            yield env
    except Unavailable as exc:
        pytest.skip(f"no local SLURM cluster: {exc}")


def run(cmd, env, timeout=120):
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_sweep_on_slurm_survives_preemption_and_equals_a_local_run(slurm, tmp_path):
    env = {**slurm, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    path = tmp_path / "grid.toml"
    path.write_text(SWEEP)
    art, ref = tmp_path / "art", tmp_path / "ref"
    probe = [sys.executable, "-m", "probe", "--artifacts", art]
    submitted = run([*probe, "sweep", path, "--executor", "slurm"], env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    array = re.search(r"SLURM array (\d+)", submitted.stdout).group(1)

    # preempt the task whose run is part-way: a checkpoint before the last step, no weights
    deadline, victim = time.monotonic() + 300, None
    while time.monotonic() < deadline and victim is None:
        for ckpt in art.glob("runs/*/checkpoints/step-*"):
            run_dir = ckpt.parents[1]
            if ckpt.name < "step-0000040" and not (run_dir / "ema.safetensors").exists():
                state = (art / "sweeps" / "grid" / "jobs" / f"{run_dir.name}.json").read_text()
                victim = (run_dir.name, re.search(r'"slurm_job": "([\d_]+)"', state).group(1))
                break
        time.sleep(0.05)
    assert victim, run(["squeue"], env).stdout
    for sig in ("SIGTERM", "USR2"):  # what a preemption sends (submitit's own _interrupt)
        sent = run(["scancel", "--signal", sig, victim[1]], env)
        assert sent.returncode == 0, sent.stderr

    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        status = run([*probe, "sweep", "status", path], env)
        if "2 done" in status.stdout:
            break
        assert "failed" not in status.stdout.split("jobs:")[0], status.stdout
        time.sleep(2)
    assert "2 jobs: 2 done" in status.stdout, (status.stdout, run(["squeue"], env).stdout)
    submitit_logs = "".join(p.read_text(errors="replace")
                            for p in (art / "sweeps" / "grid" / "slurm").rglob("*.out"))
    assert "requeu" in submitit_logs.lower(), submitit_logs[-2000:]
    assert "resuming at step" in "".join(
        p.read_text(errors="replace") for p in (art / "sweeps" / "grid" / "slurm").rglob("*")
        if p.is_file() and p.suffix in (".out", ".err")), "the preempted job did not resume"

    local = run([sys.executable, "-m", "probe", "--artifacts", ref, "train-split", "--n", 10,
                 "--split", "both", "--dataset", "digits", "--size", 8, "--arch", "dit-tiny/4",
                 "--steps", 60, "--batch", 8, "--checkpoint-every", 10, "--sample-grid", 0],
                env, timeout=400)
    assert local.returncode == 0, local.stderr
    names = sorted(p.name for p in (ref / "runs").iterdir())
    assert victim[0] in names and len(names) == 2
    for name in names:
        same_weights(art / "runs" / name, ref / "runs" / name)
    assert f"slurm {array}_" in status.stdout  # the table names each task
