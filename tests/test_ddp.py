"""DDP for real: `torchrun --nproc_per_node 2` (gloo, CPU) trains the same run as one process
with the same global batch, to float tolerance; killed and resumed under DDP it equals the
uninterrupted DDP run bit for bit; only rank 0 writes; sampling and probes run once.

Why a tolerance and not bitwise: each rank takes the mean loss of its half batch and DDP
averages the two gradients ((g0 + g1) / 2), where one process takes the mean over the whole
batch; the sums run in another order, so gradients differ in their last bits (~1e-7 relative),
and Adam, dividing by the root of tiny second moments, carries that into the weights. Every
random draw is the same (each rank keeps its rows of the global batch's noise), so the
difference stays at rounding level."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
ARGS = ["train-split", "--n", "16", "--dataset", "digits", "--size", "8", "--arch",
        "dit-tiny/4", "--steps", "12", "--batch", "8", "--checkpoint-every", "3",
        "--sample-grid", "2", "--log-every", "1"]
RTOL, ATOL = 1e-4, 1e-6  # see the module docstring

# Loaded into every Python process of the test (PYTHONPATH): a rank other than 0 records every
# file it opens for writing, renames or replaces under the artifacts root.
SITECUSTOMIZE = '''
import builtins, io, os
_rank, _root, _out = os.environ.get("RANK"), os.environ.get("T_ROOT"), os.environ.get("T_OUT")
if _rank not in (None, "0") and _root and _out:
    _open, _replace, _rename = io.open, os.replace, os.rename
    def _note(kind, path):
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return
        if p.startswith(os.path.realpath(_root)):
            with _open(os.path.join(_out, f"rank{_rank}-{os.getpid()}.txt"), "a") as f:
                f.write(f"{kind} {p}\\n")
    def _opener(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            _note("open", file)
        return _open(file, mode, *a, **k)
    def _rep(src, dst, *a, **k):
        _note("replace", dst)
        return _replace(src, dst, *a, **k)
    def _ren(src, dst, *a, **k):
        _note("rename", dst)
        return _rename(src, dst, *a, **k)
    builtins.open = io.open = _opener
    os.replace, os.rename = _rep, _ren
'''


def env(tmp_path: Path, root: Path) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    writes = tmp_path / "writes"
    writes.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
            "T_ROOT": str(root), "T_OUT": str(writes)}


def torchrun(root: Path) -> list[str]:
    # the root in PROBE_ARTIFACTS; `--` ends torchrun's options (it would take --n for its own)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", "-m", "probe", "--", *ARGS]


def run(cmd, environ, timeout=300):
    done = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weights(run_dir: Path) -> dict:
    return {name: load_file(run_dir / name) for name in ("model.safetensors",
                                                          "ema.safetensors")}


def only_run(root: Path) -> Path:
    (run_dir,) = (root / "runs").iterdir()
    return run_dir


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process_and_resumes_exactly(tmp_path):
    single, ddp, killed = tmp_path / "single", tmp_path / "ddp", tmp_path / "killed"
    run([sys.executable, "-m", "probe", "--artifacts", str(single), *ARGS],
        env(tmp_path, single))
    reference = only_run(single)

    # uninterrupted under torchrun, through a sweep job: training on 2 ranks, probes once
    sweep_file = tmp_path / "one.toml"
    sweep_file.write_text(
        "[grid]\nn = [16]\n[fixed]\n" + "".join(
            f"{ARGS[i][2:].replace('-', '_')} = {_toml(ARGS[i + 1])}\n"
            for i in range(3, len(ARGS), 2)) + '[probes]\nrun = [["generalization", "@run", '
        '"--images", "2", "--sigmas", "0.5"]]\n')
    for root in (ddp, killed):  # the prepared data set, so that training alone is compared
        shutil.copytree(single / "data", root / "data")
    from probe.artifacts import Artifacts
    from probe.sweep import load

    (job,) = load(sweep_file, Artifacts.at(ddp)).jobs
    assert job.run_id == reference.name
    done = run([sys.executable, "-m", "probe", "--artifacts", str(ddp), "sweep", "job",
                str(sweep_file), "--job", job.run_id, "--gpus", "2"], env(tmp_path, ddp))
    out = done.stdout + done.stderr
    assert out.count("sampling 2 images") == 1, out  # rank 0 only
    assert out.count("run: ") == 1 and out.count("probe: ") == 1, out
    assert "--nproc_per_node" not in out
    run_dir = ddp / "runs" / job.run_id
    steps = [line.split('"step": ')[1].split(",")[0]
             for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) == 12, steps  # one writer
    assert (run_dir / "samples.png").is_file()

    a, b = weights(reference), weights(run_dir)
    worst = 0.0
    for name in a:
        for key in a[name]:
            x, y = a[name][key], b[name][key]
            assert torch.allclose(x, y, rtol=RTOL, atol=ATOL), (name, key, (x - y).abs().max())
            worst = max(worst, float((x - y).abs().max()))
    print(f"largest |single - ddp| weight difference: {worst:.2e}")

    # killed under torchrun after a checkpoint, rerun: the same weights as uninterrupted DDP
    environ = {**env(tmp_path, killed), "PROBE_ARTIFACTS": str(killed)}
    proc = subprocess.Popen(torchrun(killed), env=environ, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if list(killed.glob("runs/*/checkpoints/step-0000003")) + \
                    list(killed.glob("runs/*/checkpoints/step-0000006")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training finished before it could be killed"
    finally:  # torchrun's workers run in sessions of their own: kill the whole tree
        for child in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not (only_run(killed) / "ema.safetensors").exists()
    again = run(torchrun(killed), environ)
    assert "resuming at step" in again.stderr
    c = weights(only_run(killed))
    for name in b:
        for key in b[name]:
            assert torch.equal(b[name][key], c[name][key]), (name, key)

    writes = sorted((tmp_path / "writes").iterdir())
    assert not writes, "ranks other than 0 wrote: " + "".join(p.read_text() for p in writes)


def _toml(value: str) -> str:
    return value if value.isdigit() else f'"{value}"'
