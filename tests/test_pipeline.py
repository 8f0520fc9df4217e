"""The one driver every probe command runs through: runs chosen when none is named, the probe
protocol, and outside models (--diffusers) on every probe that can take one."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from probe import pipeline
from probe.artifacts import Artifacts, read_json
from probe.cli import cli
from probe.probes.protocol import Probe
from probe.runs import Run, load_run
from tests.helpers import assert_one_line_error

TINY = ["--dataset", "digits", "--size", "8", "--arch", "dit-tiny/4", "--steps", "2",
        "--batch", "4", "--test-size", "16", "--sample-grid", "0", "--checkpoint-every", "100"]


def invoke(root: Path, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(root), *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`probe train-split --n 10` twice: first at one seed, then at another (the latest)."""
    root = tmp_path_factory.mktemp("pipeline")
    for seed in ("0", "1"):
        result = invoke(root, "train-split", "--n", "10", "--seed", seed, *TINY)
        assert result.exit_code == 0, result.stderr
    return root


def test_probes_with_no_run_take_the_finished_runs(trained, tmp_path):
    root = tmp_path / "art"
    shutil.copytree(trained, root)
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert len(runs) == 2
    (root / "runs" / "unfinished").mkdir()  # no weights: never chosen
    shutil.copy(root / "runs" / runs[0] / "config.json", root / "runs" / "unfinished")
    result = invoke(root, "attention-locality", "--images", "2", "--sigmas", "1",
                    "--no-figures")
    assert result.exit_code == 0, result.stderr
    assert "runs: 2 finished" in result.stderr and all(r in result.stderr for r in runs)
    assert sorted(p.name for p in (root / "probes").iterdir()) == runs
    latest = read_json(root / "last-runs.json")["runs"]
    result = invoke(root, "jacobian-basis", "--last", "--images", "1", "--sigmas", "0.5",
                    "--k", "4", "--no-figures")
    assert result.exit_code == 0, result.stderr
    assert "from the latest train-split" in result.stderr
    probed = [r for r in runs if (root / "probes" / r / "jacobian.h5").is_file()]
    assert probed == latest and len(latest) == 1


def test_with_no_runs_at_all_one_line_says_what_to_do(tmp_path):
    for command in ("attention-locality", "jacobian-basis", "generalization", "attribution",
                    "sample"):
        assert_one_line_error(invoke(tmp_path, command), "no finished runs", "train-split")
    assert_one_line_error(invoke(tmp_path, "sample", "--last"), "latest train-split")


def test_every_probe_command_runs_through_the_one_driver():
    assert set(pipeline.PROBES) == {"attention-locality", "jacobian-basis", "generalization",
                                    "attribution", "sample", "compare"}
    for name, probe in pipeline.PROBES.items():
        assert isinstance(probe, Probe) and probe.name == name
        assert name in cli.commands
    # each command module hands its probe to run_probe_command, none drives a probe itself
    commands = Path(__file__).resolve().parents[1] / "probe" / "cli"
    for name in pipeline.PROBES:
        module = commands / {"attention-locality": "attention.py",
                             "jacobian-basis": "jacobian.py",
                             "compare": "baseline.py"}.get(name, f"{name}.py")
        calls = {n.func.id for n in ast.walk(ast.parse(module.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "run_probe_command" in calls, module


def test_trained_and_outside_runs_satisfy_the_run_protocol(trained):
    run = load_run(next((trained / "runs").iterdir()), Artifacts.at(trained))
    assert isinstance(run, Run)
    assert run.image_shape == (1, 8, 8) and run.value_range == (-1.0, 1.0)
    assert run.n == 10 and len(run.train_indices) == 10 and len(run.test_indices) == 16


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    """A diffusers DiTTransformer2DModel saved with save_pretrained (random weights), its
    scheduler config beside it."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
                                  out_channels=2, num_layers=2, sample_size=8, patch_size=2,
                                  norm_num_groups=1, num_embeds_ada_norm=10)
    folder = tmp_path_factory.mktemp("diffusers") / "my-dit"
    model.save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    return folder


OUTSIDE = ["--dataset", "digits", "--size", "8", "--sigmas", "0.5", "--no-figures"]


@pytest.mark.parametrize("command,extra,output", [
    ("attention-locality", ["--images", "2"], "attention.h5"),
    ("jacobian-basis", ["--images", "1", "--k", "4"], "jacobian.h5"),
    ("attribution", ["--images", "1"], "attribution.h5"),
])
def test_diffusers_models_run_on_every_probe_that_needs_no_training_images(
        dit_folder, tmp_path, command, extra, output):
    result = invoke(tmp_path, command, "--diffusers", str(dit_folder), *OUTSIDE, *extra)
    assert result.exit_code == 0, result.stderr
    (probes,) = (tmp_path / "probes").iterdir()
    assert (probes / output).is_file()


def test_diffusers_sample(dit_folder, tmp_path):
    result = invoke(tmp_path, "sample", "--diffusers", str(dit_folder), "--dataset", "digits",
                    "--size", "8", "--n", "2", "--steps", "3")
    assert result.exit_code == 0, result.stderr
    (probes,) = (tmp_path / "probes").iterdir()
    assert (probes / "samples.h5").is_file() and (probes / "samples.png").is_file()


@pytest.mark.parametrize("command,extra,needs", [
    ("generalization", [], "PSNR gap"),
    ("attribution", ["--influence"], "influence"),
    ("jacobian-basis", ["--from", "train", "--k", "4"], "training images (--from train)"),
])
def test_metrics_that_need_training_images_refuse_outside_models(dit_folder, tmp_path,
                                                                 command, extra, needs):
    result = invoke(tmp_path, command, "--diffusers", str(dit_folder), *OUTSIDE, *extra)
    assert_one_line_error(result, needs, "training images", "trained elsewhere")
    assert not (tmp_path / "probes").exists()


def test_a_run_given_as_model_is_the_run_itself(trained, tmp_path):
    """`--model RUN_DIR` is format probe-run: the same Run as naming the directory, and
    `probe denoise` works on it with sigma on the [0, 1] scale (2 sigma on the run's own)."""
    import numpy as np

    run_dir = next((trained / "runs").iterdir())
    store = Artifacts.at(trained)
    (run,) = pipeline.load_runs([], store, models=[str(run_dir)])
    assert run.run_id == run_dir.name and run.provenance()["format"] == "probe-run"
    image = tmp_path / "digit.npy"
    pixels = (run.images(run.test_indices[:1])[0, 0].numpy() + 1) / 2
    np.save(image, pixels.astype(np.float32))
    result = invoke(trained, "denoise", "--model", str(run_dir), "--sigma", "0.1",
                    str(image), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    noisy = np.load(tmp_path / "out" / "digit.noisy.npy")[..., 0]
    assert 0.05 < float(np.std(noisy - pixels)) < 0.15
    with torch.no_grad():
        want = (run.denoiser(torch.from_numpy(2 * noisy - 1)[None, None], 0.2) + 1) / 2
    np.testing.assert_allclose(np.load(tmp_path / "out" / "digit.denoised.npy")[..., 0],
                               want[0, 0].numpy(), atol=1e-6)
