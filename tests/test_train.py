"""`probe train-split` end to end: exact resume after SIGKILL, memorization, checkpoints, errors.

Subprocess runs use one intra-op thread (OMP_NUM_THREADS=1): on a shared 2-core machine two
threads are several times slower for these tiny models, and the killed, resumed and
uninterrupted runs must do the same floating-point work to end bit-identical.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from probe import checkpoints
from probe.artifacts import Artifacts, read_json, sha256_file
from probe.cli import cli
from probe.config import DataConfig, ModelConfig, RunConfig, SubsetConfig, TrainConfig
from probe.diffusion.samplers import sample_from_seeds
from probe.errors import ProbeError
from probe.models import zoo
from probe.runs import load_run
from probe.train import train_run

# ------------------------------------------------------------------ memorization (in process)

# N = 1 digit at 8x8 (scikit-learn's digits: native size, cheap to prepare), the DiT recipe's
# ddpm objective. 300 steps at lr 2e-3 reach ~0.08 rms from the training image; fewer steps or a
# smaller batch leave ~0.1-0.15, which is no longer clearly closer than the digit's nearest
# neighbour in the data set (0.17 rms).
MEMORIZE = RunConfig(
    data=DataConfig(dataset="digits", size=8),
    subsets=SubsetConfig(ns=(1,), test_size=64),
    model=ModelConfig(arch="dit-tiny/4"),
    train=TrainConfig(n=1, steps=300, batch=32, lr=2e-3, objective="ddpm", sample_grid=0,
                      checkpoint_every=150, log_every=50),
)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    store = Artifacts.at(tmp_path_factory.mktemp("train-art"))
    run_dir = train_run(MEMORIZE, store, progress=False, log=lambda msg: None)
    return store, run_dir


def test_tiny_model_reproduces_its_single_training_image(memorized):
    store, run_dir = memorized
    run = load_run(run_dir, store)
    everything = run.images(range(len(run.prepared.images))).flatten(1)
    # Ancestral DDPM, the DiT recipe's sampler. (DDIM, deterministic from sigma = 157, carries
    # this short training's epsilon error all the way down: a few of its samples diverge.)
    samples = sample_from_seeds(run.denoiser, list(range(16)), "ddpm", steps=50).flatten(1)
    rms = torch.cdist(samples, everything) / samples.shape[1] ** 0.5
    nearest = rms.argmin(1)
    # Every sample's nearest image in the whole data set is the one training image ...
    assert set(nearest.tolist()) == set(run.train_indices.tolist())
    # ... and it is close to it in absolute terms (data in [-1, 1]).
    assert rms[:, run.train_indices[0]].max() < 0.12


def test_weights_carry_the_config_and_load_back(memorized):
    store, run_dir = memorized
    info = read_json(run_dir / "config.json")
    meta = checkpoints.read_metadata(run_dir / "ema.safetensors")
    assert meta["arch"] == "dit-tiny/4" and meta["step"] == 300 and meta["run_id"] == run_dir.name
    assert meta["config"] == {k: info[k] for k in ("data", "subsets", "model", "train")}
    assert meta["config"]["model"]["image_size"] == 8  # resolved from the data
    assert info["parameters"] == zoo.count_parameters(zoo.build(ModelConfig(
        arch="dit-tiny/4", image_size=8)))

    run = load_run(run_dir, store)
    saved = load_file(str(run_dir / "ema.safetensors"))
    state = run.denoiser.backbone.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert not run.denoiser.training
    assert not any(p.requires_grad for p in run.denoiser.parameters())
    assert run.n == 1 and run.arch == "dit-tiny/4" and len(run.train_indices) == 1
    assert run.provenance()["checkpoint_sha256"] == sha256_file(run_dir / "ema.safetensors")
    # The training state is plain tensors and containers: it loads with weights_only=True.
    (last,) = checkpoints.checkpoints(run_dir)
    assert last.name == "step-0000300"
    state = torch.load(last / "state.pt", weights_only=True)
    assert state["step"] == 300
    assert set(state["optimizer"]) == {"state", "param_groups"}
    assert checkpoints.read_metadata(last / "model.safetensors")["step"] == 300


def test_stats_log_every_step_window(memorized):
    _, run_dir = memorized
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150, 200, 250, 300]
    assert all(r["lr"] == 2e-3 and r["images_per_s"] > 0 and r["loss"] > 0 for r in rows)


def test_prefixes_are_stripped(tmp_path):
    model = zoo.build(ModelConfig(arch="dit-tiny/4", image_size=8))
    state = model.state_dict()
    # A torch.compile wrapper (lazy: nothing compiles until it is called) adds "_orig_mod.".
    compiled = torch.compile(model)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    checkpoints.save_weights(tmp_path / "a.safetensors", compiled, {"arch": "dit-tiny/4"})
    assert set(load_file(str(tmp_path / "a.safetensors"))) == set(state)
    # A file written by a DDP-wrapped, compiled model loads into a plain one.
    prefixed = {f"module._orig_mod.{k}": v.clone() + 1 for k, v in state.items()}
    save_file(prefixed, str(tmp_path / "b.safetensors"))
    target = zoo.build(ModelConfig(arch="dit-tiny/4", image_size=8))
    checkpoints.load_weights(tmp_path / "b.safetensors", target)
    assert all(torch.equal(target.state_dict()[k], state[k] + 1) for k in state)
    assert checkpoints.clean_state_dict({"_orig_mod.module.x": torch.zeros(1)}).keys() == {"x"}


def test_loading_another_architecture_is_one_error(tmp_path):
    small = zoo.build(ModelConfig(arch="dit-tiny/4", image_size=8))
    checkpoints.save_weights(tmp_path / "w.safetensors", small, {"arch": "dit-tiny/4"})
    other = zoo.build(ModelConfig(arch="dit-tiny/2", image_size=8))
    with pytest.raises(ProbeError, match="holds dit-tiny/4, which does not fit"):
        checkpoints.load_weights(tmp_path / "w.safetensors", other)


def test_incomplete_checkpoints_are_ignored(tmp_path):
    (tmp_path / "checkpoints" / "step-0000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000004" / "state.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "step-0000009").mkdir()  # killed before its state was written
    (tmp_path / "checkpoints" / ".step-abc").mkdir()  # a temporary directory
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-0000004"]


# ------------------------------------------------------------------ command-line errors


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _assert_one_line_error(result, fragment: str):
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert fragment in lines[0]
    assert "Traceback" not in result.output


TINY = ["--dataset", "digits", "--size", "8", "--steps", "2", "--batch", "4", "--sample-grid",
        "0", "--test-size", "16"]


@pytest.mark.parametrize("extra, fragment", [
    (["--arch", "dit-q/2"], "unknown arch 'dit-q/2'"),
    (["--arch", "dit-tiny/2", "--window", "0:9"], "larger than the 4x4 token grid"),
    (["--arch", "dit-tiny/2", "--window", "4:3"], "layers must lie in 0..3"),
    (["--arch", "dit-tiny/2", "--window", "0:4"], "size must be odd"),
    (["--arch", "dit-tiny/2", "--window", "0-x:3"], "expected LAYERS:SIZE"),
    (["--arch", "dit-tiny/2", "--window", "an-default"], "places 6 windows; this model has 4"),
    (["--arch", "dit-tiny/2", "--n", "100000"], "N=100000 is larger than split a allows"),
    (["--arch", "dit-tiny/2", "--batch", "0"], "--batch"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, fragment):
    args = ["--artifacts", str(tmp_path), "train-split", *TINY, *extra]
    if "--n" not in extra:
        args += ["--n", "2"]
    _assert_one_line_error(_invoke(args), fragment)


def test_resume_with_another_architecture_is_one_line(memorized):
    store, run_dir = memorized
    result = _invoke(["--artifacts", str(store.root), "train-split", *TINY, "--n", "1",
                      "--arch", "dit-tiny/2", "--resume", str(run_dir)])
    _assert_one_line_error(result, "is a checkpoint of dit-tiny/4, not dit-tiny/2")
    result = _invoke(["--artifacts", str(store.root), "train-split", *TINY, "--n", "1",
                      "--resume", str(store.root / "nowhere")])
    _assert_one_line_error(result, "not a run directory")


# ------------------------------------------------------------------ resume after SIGKILL

STEPS = 40
COMMAND = ["train-split", "--n", "4", "--dataset", "digits", "--size", "8", "--arch", "dit-tiny/2",
           "--window", "0-1:3", "--steps", str(STEPS), "--batch", "4", "--lr", "1e-3",
           "--checkpoint-every", "2", "--log-every", "1", "--sample-grid", "4",
           "--test-size", "16"]


def _probe(root: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "probe", "--artifacts", str(root), *COMMAND],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out, err


def _checkpoint_steps(root: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in root.glob("runs/*/checkpoints/step-*"))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    killed_root, whole_root = tmp_path / "killed", tmp_path / "whole"
    whole = _probe(whole_root)  # the reference, side by side with the run we kill
    victim = _probe(killed_root)
    try:
        deadline = time.monotonic() + 240
        while not any(s >= 2 for s in _checkpoint_steps(killed_root)):
            assert victim.poll() is None, victim.communicate()[1]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
    (run_dir,) = killed_root.glob("runs/*")
    killed_at = _checkpoint_steps(killed_root)[-1]
    assert 2 <= killed_at < STEPS and not (run_dir / "ema.safetensors").exists()

    out, err = _finish(_probe(killed_root))
    assert f"resuming at step {killed_at}" in err
    assert out.splitlines()[-1] == f"run: {run_dir}"
    whole_out, _ = _finish(whole)
    (whole_dir,) = whole_root.glob("runs/*")
    assert whole_dir.name == run_dir.name

    for name in ("model.safetensors", "ema.safetensors"):
        resumed, reference = _tensors(run_dir / name), _tensors(whole_dir / name)
        assert set(resumed) == set(reference)
        for key in reference:
            assert torch.equal(resumed[key], reference[key]), (name, key)
    assert (run_dir / "samples.png").read_bytes() == (whole_dir / "samples.png").read_bytes()

    def losses(directory):
        return [(r["step"], r["loss"]) for r in map(json.loads,
                                                     (directory / "stats.jsonl").open())]

    assert losses(run_dir) == losses(whole_dir)
    assert [s for s, _ in losses(run_dir)] == list(range(1, STEPS + 1))

    # The window went into the config, the weights' metadata and the model read back.
    meta = checkpoints.read_metadata(run_dir / "ema.safetensors")
    assert meta["config"]["model"]["windows"] == ["0-1:3"]
    blocks = load_run(run_dir, Artifacts.at(killed_root)).denoiser.backbone.blocks
    assert [b.attn.window for b in blocks] == [3, 3, 0, 0]

    # Rerunning the finished command is a no-op that names the same run (in process: nothing
    # is trained, so the thread count does not matter, and it saves a start-up).
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    result = _invoke(["--artifacts", str(killed_root), *COMMAND])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"run: {run_dir}"
    assert "already trained" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
