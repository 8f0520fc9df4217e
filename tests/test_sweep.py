"""`probe sweep`: the file format and its expansion, the print and local executors (killed with
SIGKILL halfway and rerun: every run identical to a sequential one), status and collect, and
bad input in one line. DDP under torchrun is in test_ddp.py, SLURM in test_slurm.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from probe.artifacts import Artifacts
from probe.cli import cli
from probe.errors import ProbeError
from tests.helpers import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
TINY = """
[fixed]
dataset = "digits"
size = 8
arch = "dit-tiny/4"
steps = 20
batch = 8
checkpoint-every = 5
sample_grid = 0
"""


def write(tmp_path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def env(threads: int = 1) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}


def probe_cmd(root, *args) -> list[str]:
    return [sys.executable, "-m", "probe", "--artifacts", str(root), *map(str, args)]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].equal(y[key]), (a.name, name, key)


# ------------------------------------------------------------------- file and expansion


def test_grid_expands_to_jobs_named_by_run_ids(tmp_path):
    from probe import sweep
    from probe.cli.train import planned_configs
    from probe.train import run_id

    path = write(tmp_path, """
[grid]
n = [10, 20]
split = ["a", "b"]
window = ["", "0:3"]
[[exclude]]
n = 10
window = "0:3"
[probes]
run = [["generalization", "@run", "--images", "2"]]
[slurm]
partition = "gpu"
""" + TINY)
    store = Artifacts.at(tmp_path / "art")
    s = sweep.load(path, store)
    assert len(s.jobs) == 6  # 2 x 2 x 2 minus the two rows n=10 with a window
    points = [dict(j.point) for j in s.jobs]
    assert {"n": 10, "split": "a", "window": ""} in points
    assert not any(p["n"] == 10 and p["window"] == "0:3" for p in points)
    job = next(j for j in s.jobs if dict(j.point) == {"n": 20, "split": "b", "window": "0:3"})
    assert "--window" in job.args and "--sample-grid" in job.args
    (cfg,) = planned_configs(store, list(job.args))
    assert job.run_id == run_id(cfg) and cfg.train.n == 20 and cfg.model.windows == ("0:3",)
    assert len({j.run_id for j in s.jobs}) == 6
    assert s.probes == [["generalization", "@run", "--images", "2"]]
    assert s.slurm == {"partition": "gpu"}
    assert not (tmp_path / "art").exists()  # planning writes nothing


def test_print_executor_writes_a_command_per_job(tmp_path):
    path = write(tmp_path, '[grid]\nn = [10]\nsplit = ["a", "b"]\n'
                 '[probes]\nrun = [["generalization", "@run"]]\n' + TINY)
    art = tmp_path / "art"
    result = invoke("--artifacts", art, "sweep", path, "--executor", "print",
                    "--gpus-per-job", "2", "--threads-per-job", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, split in zip(lines, "ab"):
        assert line.startswith(f"OMP_NUM_THREADS=3 PROBE_ARTIFACTS={art} torchrun --standalone "
                               f"--nproc_per_node 2 -m probe -- train-split --n 10 --split {split}")
        assert f"&& probe --artifacts {art} generalization {art}/runs/digits8-" in line


@pytest.mark.parametrize("text, fragments", [
    ("[grid]\nn = [10]\nlearning_rate = [1e-3]\n" + TINY,
     ["learning_rate is not a train-split option"]),
    ("[grid]\n" + TINY, ["the grid is empty"]),
    ("[grid]\nn = []\n" + TINY, ["the grid is empty"]),
    ("[grid]\nn = 10\n" + TINY, ["n must be a list"]),
    ("[grid]\nsplit = ['a']\n" + TINY, ["no n"]),
    ("[grid]\nn = [10]\nresume = ['x']\n" + TINY, ["resume is not a train-split option"]),
    ("[grid]\nn = [10]\nsplit = ['both']\n" + TINY, ["split is a or b"]),
    ("[grid]\nn = [10]\n[[exclude]]\nseed = 1\n" + TINY, ["exclude row names grid keys"]),
    ("[grid]\nn = [10]\n[[exclude]]\nn = 10\n" + TINY, ["removes every job"]),
    ("[grid]\nn = [10]\n[probes]\nrun = [['nonsense', '@run']]\n" + TINY,
     ["'nonsense' is not a probe command"]),
    ("[grid]\nn = [10]\n[slurm]\npartitions = 'x'\n" + TINY, ["[slurm] partitions"]),
    ("[grid]\nn = [10]\n[grids]\n" + TINY, ["unknown section 'grids'"]),
    ("[grid]\nn = [10]\narch = ['no-such-arch']\n" + TINY.replace('arch = "dit-tiny/4"\n', ""),
     ["job n=10 arch=no-such-arch"]),
    ("[grid]\nn = [100000]\n" + TINY, ["N=100000 is not available"]),
    ("[grid\n", ["grid.toml"]),
])
def test_bad_sweep_files_are_one_line(tmp_path, text, fragments):
    path = write(tmp_path, text)
    assert_one_line_error(invoke("--artifacts", tmp_path / "art", "sweep", path, "--dry-run"),
                          *fragments)
    assert_one_line_error(invoke("--artifacts", tmp_path / "art", "sweep", "status", path),
                          *fragments)


def test_slurm_without_sbatch_and_gpus_without_gpus_are_one_line(tmp_path, monkeypatch):
    import torch

    path = write(tmp_path, "[grid]\nn = [10]\n" + TINY)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert_one_line_error(invoke("--artifacts", tmp_path / "art", "sweep", path,
                                 "--executor", "slurm"), "sbatch is not on PATH")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --gpus-per-job is not refused here")
    assert_one_line_error(invoke("--artifacts", tmp_path / "art", "sweep", path,
                                 "--gpus-per-job", "2"), "this machine has no GPU")
    assert_one_line_error(invoke("sweep", tmp_path / "missing.toml"), "sweep file not found")


def test_slurm_settings_become_submitit_parameters():
    from probe.sweep import _minutes, slurm_parameters

    params = slurm_parameters({"partition": "gpu", "time": "1-02:03:00", "mem": "16G",
                               "gpus_per_job": 2, "threads_per_job": 8, "account": "lab"})
    assert params == {"nodes": 1, "tasks_per_node": 1, "cpus_per_task": 8,
                      "timeout_min": 26 * 60 + 3, "gpus_per_node": 2, "mem_gb": 16,
                      "slurm_partition": "gpu", "slurm_account": "lab"}
    assert _minutes("90") == 90 and _minutes("02:00:00") == 120 and _minutes(30) == 30
    with pytest.raises(ProbeError):
        _minutes("soon")


# ------------------------------------------------------------------ one job, status, collect


def test_job_status_failed_then_done_and_collect(tmp_path):
    """A job whose probe fails is `failed` with its log and error line; fixed and rerun it is
    `done` (the finished run is not trained again), and collect reports it."""
    from probe import sweep

    art = tmp_path / "art"
    bad = write(tmp_path, '[grid]\nn = [10]\n[probes]\nrun = [["report", "--no-such"]]\n'
                + TINY, "s.toml")
    store = Artifacts.at(art)
    (job,) = sweep.load(bad, store).jobs
    result = invoke("--artifacts", art, "sweep", "job", bad, "--job", job.run_id)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines()[-1] == "error: No such option '--no-such'."  # after training
    status = invoke("--artifacts", art, "sweep", "status", bad)
    assert status.exit_code == 0
    row = status.stdout.splitlines()[1]
    assert job.run_id in row and " failed " in row and "--no-such" in row
    assert "1 failed" in status.stdout

    write(tmp_path, '[grid]\nn = [10]\n[probes]\nrun = [["report", "--quiet"]]\n' + TINY,
          "s.toml")
    assert_one_line_error(invoke("--artifacts", art, "sweep", "collect", bad), "no job is done")
    result = invoke("--artifacts", art, "sweep", "job", bad, "--job", job.run_id)
    assert result.exit_code == 0, result.output
    assert "already trained" in result.stderr
    status = invoke("--artifacts", art, "sweep", "status", bad)
    assert " done " in status.stdout.splitlines()[1] and "20/20" in status.stdout
    collect = invoke("--artifacts", art, "sweep", "collect", bad)
    assert collect.exit_code == 0, collect.output
    assert "collecting 1 of 1 jobs" in collect.stdout and (art / "report.md").is_file()


# --------------------------------------------------------------------------- local pool


@pytest.mark.slow
def test_local_pool_killed_halfway_and_rerun_equals_sequential(tmp_path):
    fixed = TINY.replace("steps = 20", "steps = 60").replace("every = 5", "every = 10")
    path = write(tmp_path, '[grid]\nn = [10, 20]\nsplit = ["a", "b"]\n' + fixed)
    art, ref = tmp_path / "art", tmp_path / "ref"
    store = Artifacts.at(art)
    sweep_cmd = probe_cmd(art, "sweep", path, "--jobs", 2, "--threads-per-job", 1)
    proc = subprocess.Popen(sweep_cmd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    try:  # SIGKILL once a run is part-way: a checkpoint before its last step, no final weights
        while time.monotonic() < deadline and proc.poll() is None:
            if any(not (c.parents[1] / "ema.safetensors").exists()
                   for c in art.glob("runs/*/checkpoints/step-*")
                   if c.name < "step-0000050"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1)  # the workers die with the sweep (PR_SET_PDEATHSIG)
    finished = [r for r in (art / "runs").iterdir() if (r / "ema.safetensors").exists()]
    assert len(finished) < 4

    again = subprocess.run(sweep_cmd, env=env(), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(finished)} done" in again.stdout
    logs = "".join(p.read_text() for p in (art / "sweeps" / "grid" / "logs").iterdir())
    assert "resuming at step" in logs
    status = subprocess.run(probe_cmd(art, "sweep", "status", path), env=env(),
                            capture_output=True, text=True, timeout=120)
    assert "4 jobs: 4 done" in status.stdout, status.stdout

    sequential = subprocess.run(
        probe_cmd(ref, "train-split", "--n", 10, "--n", 20, "--split", "both", "--dataset",
                  "digits", "--size", 8, "--arch", "dit-tiny/4", "--steps", 60, "--batch", 8,
                  "--checkpoint-every", 10, "--sample-grid", 0),
        env=env(), capture_output=True, text=True, timeout=400)
    assert sequential.returncode == 0, sequential.stderr
    ref_runs = sorted(p.name for p in (ref / "runs").iterdir())
    assert ref_runs == sorted(j.run_id for j in __import__("probe.sweep").sweep.load(
        path, store).jobs)
    for name in ref_runs:
        same_weights(art / "runs" / name, ref / "runs" / name)


@pytest.mark.parametrize("name", ["an-windows.toml", "kadkhodaie-n.toml"])
def test_shipped_paper_sweeps_expand(name, tmp_path):
    """The README's paper-scale sweeps parse and expand (planning them needs CelebA)."""
    from probe import sweep

    s = sweep.load(REPO / "experiments" / "sweeps" / name, Artifacts.at(tmp_path), plan=False)
    assert len(s.jobs) == {"an-windows.toml": 18, "kadkhodaie-n.toml": 12}[name]
    assert s.probes and sweep.slurm_parameters(s.slurm)["gpus_per_node"] == 1
