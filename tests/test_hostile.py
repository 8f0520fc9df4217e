"""Hostile but fair input to every command: one clean line and exit code 2, never a traceback,
a signal or a hang; nothing left behind and nothing accepted that makes no sense.

The cases reproduce what a new user tried (issue 17): bad options, damaged runs (config.json,
weights, checkpoints), experiment files that cannot work, artifacts roots that cannot be
written, images at depths and sizes that would be read wrong."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from probe.artifacts import Artifacts
from probe.cli import cli

TINY = ["--dataset", "digits", "--size", "8", "--arch", "dit-tiny/4", "--steps", "4",
        "--batch", "4", "--test-size", "16", "--sample-grid", "0", "--checkpoint-every", "2",
        "--n", "10"]


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(root), *args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # none escaped
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run (digits 8x8, 4 steps) under its own artifacts root."""
    root = tmp_path_factory.mktemp("hostile")
    result = invoke(root, "train-split", "--keep-checkpoints", *TINY)
    assert result.exit_code == 0, result.stderr
    return root


def _run_dir(root: Path) -> Path:
    (run,) = Artifacts.at(root).runs_dir.iterdir()
    return run


def damaged(trained: Path, tmp_path: Path, change) -> Path:
    """A copy of the trained root whose run `change(run_dir)` damaged; returns the run dir."""
    root = tmp_path / "copy"
    shutil.copytree(trained, root)
    run = _run_dir(root)
    info = json.loads((run / "config.json").read_text())
    info["data_dir"] = str(root / Path(info["data_dir"]).relative_to(trained))
    (run / "config.json").write_text(json.dumps(info))
    change(run)
    return run


def edit_config(**changes):
    """A `change` that sets config.json fields: {"train.n": -3} or a top-level key."""
    def change(run: Path):
        info = json.loads((run / "config.json").read_text())
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                info[section][field] = value
            elif value is None:
                info.pop(section)
            else:
                info[section] = value
        (run / "config.json").write_text(json.dumps(info))
    return change


def write_config(text: bytes):
    return lambda run: (run / "config.json").write_bytes(text)


def truncate(name: str):
    def change(run: Path):
        path = run / name
        path.write_bytes(path.read_bytes()[:100])
    return change


# (id, command and options after RUN, change to the run, fragment of the error line)
DAMAGED_RUNS = [
    ("config-invalid-json", ["sample"], write_config(b"{not json"), "not valid JSON"),
    ("config-empty", ["attention-locality"], write_config(b""), "not valid JSON"),
    ("config-not-utf8", ["jacobian-basis"], write_config(b"\xff\xfe{}"), "not valid JSON"),
    ("config-a-list", ["generalization"], write_config(b"[1, 2]"), "not a run configuration"),
    ("config-deeply-nested", ["sample"], write_config(b"[" * 100000 + b"]" * 100000),
     "nested too deeply"),
    ("no-data-dir", ["attribution"], edit_config(data_dir=None), "data_dir"),
    ("size-sixteen", ["sample"], edit_config(data__size="sixteen"), "data.size must be int"),
    ("channels-minus-one", ["attention-locality"], edit_config(model__channels=-1),
     "model.channels must be 1 or 3"),
    ("size-65536", ["sample"], edit_config(data__size=65536, model__image_size=65536),
     "data.size must be in 2..4096"),
    ("unknown-objective", ["jacobian-basis"], edit_config(train__objective="magic"),
     "train.objective must be one of"),
    ("n-negative", ["sample"], edit_config(train__n=-3), "train.n must be >= 1, got -3"),
    ("unknown-field", ["sample"], edit_config(train__nonsense=1), "nonsense"),
    ("train-not-a-table", ["sample"], edit_config(train=5), "train must be a table"),
    ("arch-unknown", ["sample"], edit_config(model__arch="dit-huge/3"), "dit-huge/3"),
    ("lr-nan-in-config", ["sample"], edit_config(train__lr="nan"), "train.lr must be float"),
    ("ema-truncated", ["sample"], truncate("ema.safetensors"), "cannot read weights"),
]


@pytest.mark.parametrize("command, change, fragment",
                         [c[1:] for c in DAMAGED_RUNS], ids=[c[0] for c in DAMAGED_RUNS])
def test_a_damaged_run_is_one_line_for_every_probe(trained, tmp_path, command, change, fragment):
    run = damaged(trained, tmp_path, change)
    assert_one_line_error(invoke(run.parents[1], *command, str(run)), fragment)
    assert not (run.parents[1] / "probes").exists()  # refused before anything is written


def test_train_split_resume_of_a_damaged_run_is_one_line(trained, tmp_path):
    run = damaged(trained, tmp_path, write_config(b""))
    assert_one_line_error(invoke(run.parents[1], "train-split", *TINY, "--resume", str(run)),
                          "not valid JSON")


def _image_folder(tmp_path: Path, image: Image.Image, name: str = "x.png") -> Path:
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    image.save(root / name)
    return root


def _experiment(tmp_path: Path, text) -> Path:
    path = tmp_path / "exp.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _regular_file(tmp_path: Path) -> Path:
    (tmp_path / "plain").write_text("x")
    return tmp_path / "plain" / "artifacts"


# (id, args after `probe`, with {tmp} for the test's folder; setup(tmp_path) may make files
# and returns a dict of extra placeholders; the error line's fragment)
CASES = [
    ("lr-nan", ["train-split", *TINY, "--lr", "nan"], None, "train.lr"),
    ("lr-inf", ["train-split", *TINY, "--lr", "inf"], None, "train.lr"),
    ("lr-negative", ["train-split", *TINY, "--lr", "-1"], None, "--lr"),
    ("ema-decay-nan", ["train-split", *TINY, "--ema-decay", "nan"], None, "train.ema_decay"),
    ("kimg-inf", ["train-split", *TINY, "--kimg", "inf"], None, "train.kimg"),
    ("weight-decay-nan", ["train-split", *TINY, "--weight-decay", "nan"], None,
     "train.weight_decay"),
    ("train-seed-negative", ["train-split", *TINY, "--seed", "-1"], None, "--seed"),
    ("subset-seed-negative", ["train-split", *TINY, "--subset-seed", "-2"], None,
     "--subset-seed"),
    ("train-generator-seed-negative", ["train-split", *TINY, "--generator-seed", "-1"], None,
     "--generator-seed"),
    ("n-zero", ["train-split", "--n", "0"], None, "--n"),
    ("arch-unknown", ["train-split", "--n", "1", "--arch", "dit-huge/3"], None, "dit-huge/3"),
    ("window-too-large", ["train-split", *TINY, "--window", "0:99"], None, "window"),
    ("resume-not-a-run", ["train-split", *TINY, "--resume", "{tmp}"], None,
     "not a run directory"),
    ("n-larger-than-split-dry-run", ["train-split", *TINY[:-2], "--n", "100000", "--dry-run"],
     None, "N=100000 is not available"),
    ("artifacts-empty", ["--artifacts", "", "data", "prepare"], None, "--artifacts"),
    ("artifacts-under-a-file", ["--artifacts", "{plain}", "data", "prepare", "--dataset",
                                "digits", "--size", "8"], _regular_file, "Not a directory"),
    ("artifacts-name-too-long", ["--artifacts", "{tmp}/" + "a" * 300, "train-split", *TINY],
     None, "File name too long"),
    ("subsets-seed-negative", ["data", "subsets", "--n", "2", "--seed", "-1"], None, "--seed"),
    ("subsets-generator-seed-negative", ["data", "subsets", "--n", "2", "--dataset", "disks",
                                         "--generator-seed", "-3"], None, "--generator-seed"),
    ("prepare-size-one", ["data", "prepare", "--size", "1"], None, "--size"),
    ("prepare-dedup-two", ["data", "prepare", "--dedup", "2"], None, "--dedup"),
    ("prepare-root-missing", ["data", "prepare", "--dataset", "folder", "--root",
                              "{tmp}/nothing"], None, "does not exist"),
    ("prepare-root-a-file", ["data", "prepare", "--dataset", "folder", "--root", "{tmp}/f"],
     lambda t: (t / "f").write_text("x") and {}, "not a directory"),
    ("prepare-one-pixel-image", ["data", "prepare", "--dataset", "folder", "--root",
                                 "{tmp}/images"],
     lambda t: _image_folder(t, Image.new("RGB", (1, 1))) and {}, "upscaled"),
    ("prepare-float-tiff-out-of-range", ["data", "prepare", "--dataset", "folder", "--root",
                                         "{tmp}/images"],
     lambda t: _image_folder(t, Image.fromarray(np.full((40, 40), 1e4, np.float32)),
                             "x.tiff") and {}, "float image"),
    ("show-unprepared-subsets", ["data", "show", "--dataset", "disks", "--count", "10"], None,
     "no subsets"),
    ("probe-run-missing", ["sample", "{tmp}/no-such-run"], None, "run not found"),
    ("probe-no-runs", ["attention-locality", "--last"], None, "no made by the latest"),
    ("probe-seed-negative", ["jacobian-basis", "--seed", "-1"], None, "--seed"),
    ("probe-generator-seed-negative", ["attention-locality", "--generator-seed", "-1"], None,
     "--generator-seed"),
    ("probe-sigmas-nan", ["attention-locality", "--sigmas", "nan"], None, "noise levels"),
    ("probe-sigmas-text", ["generalization", "--sigmas", "a,b"], None, "comma-separated"),
    ("probe-images-zero", ["jacobian-basis", "--images", "0"], None, "--images"),
    ("diffusers-not-a-folder", ["sample", "--diffusers", "{tmp}/nothing"], None,
     "not a folder"),
    ("diffusers-config-not-json", ["sample", "--diffusers", "{tmp}/dm"],
     lambda t: ((t / "dm").mkdir(), (t / "dm" / "config.json").write_text("{oops")) and {},
     "not valid JSON"),
    ("experiment-missing", ["experiment", "{tmp}/none.toml"], None, "not found"),
    ("experiment-run-empty", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, "[[step]]\nrun = []\n") and {}, "run = [...]"),
    ("experiment-not-utf8", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, b"name = '\xff\xfe'\n") and {}, "not UTF-8"),
    ("experiment-not-toml", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, "[[step\n") and {}, "exp.toml"),
    ("experiment-runs-itself", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, f"[[step]]\nrun = ['experiment', '{t}/exp.toml']\n") and {},
     "runs itself"),
    ("experiment-step-sets-artifacts", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, "[[step]]\nrun = ['--artifacts', '/tmp/x', 'report']\n") and {},
     "step 1"),
    ("experiment-step-artifacts-inside", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, "[[step]]\nrun = ['report', '--artifacts=/x']\n") and {},
     "may not set --artifacts"),
    ("experiment-step-resume-outside", ["experiment", "{tmp}/exp.toml"],
     lambda t: _experiment(t, "[[step]]\nrun = ['train-split', '--n', '1', '--resume', "
                              "'/elsewhere/run']\n") and {}, "outside the experiment's"),
    ("experiment-set-unknown", ["experiment", "{tmp}/exp.toml", "--set", "x=1"],
     lambda t: _experiment(t, "[[step]]\nrun = ['report']\n") and {}, "--set x"),
    ("models-show-unknown", ["models", "show", "nope"], None, "nope"),
    ("models-windows-no-attention", ["models", "windows", "--arch", "bf-unet-20"], None,
     "takes no attention windows"),
]


@pytest.mark.parametrize("args, setup, fragment", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_exit_2(tmp_path, args, setup, fragment):
    extra = (setup(tmp_path) or {}) if setup else {}
    extra = {"plain": str(_regular_file(tmp_path))} if setup is _regular_file else extra
    art = tmp_path / "art"
    args = [a.format(tmp=tmp_path, **extra) for a in args]
    full = args if args[0] == "--artifacts" else ["--artifacts", str(art), *args]
    result = CliRunner().invoke(cli, full)
    assert_one_line_error(result, fragment)


def test_the_table_covers_at_least_forty_inputs_over_every_command():
    assert len(CASES) + len(DAMAGED_RUNS) >= 40
    commands = {a for _, args, _, _ in CASES for a in args if a in cli.commands}
    commands |= {c[1][0] for c in DAMAGED_RUNS}
    assert {"train-split", "data", "sample", "attention-locality", "jacobian-basis",
            "generalization", "attribution", "experiment", "models"} <= commands


# ---------------------------------------------------------------------- what was accepted


def test_a_read_only_artifacts_root_is_one_line(trained, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions (a read-only mount needs one)")
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        assert_one_line_error(invoke(root, "data", "prepare", "--dataset", "digits", "--size",
                                     "8"), "Permission denied")
    finally:
        root.chmod(0o755)


def test_a_run_path_ending_in_dotdot_is_the_run_it_names(trained, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(trained, root)
    run = _run_dir(root)
    info = json.loads((run / "config.json").read_text())
    info["data_dir"] = str(root / Path(info["data_dir"]).relative_to(trained))
    (run / "config.json").write_text(json.dumps(info))
    result = invoke(root, "sample", str(run / "checkpoints" / ".."), "--n", "2", "--steps", "2",
                    "--no-figures")
    assert result.exit_code == 0, result.stderr
    assert (root / "probes" / run.name / "samples.h5").is_file()
    assert not (root / "samples.h5").exists()


def test_sixteen_bit_and_float_images_are_read_at_their_depth(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(root / "a16.png")
    Image.fromarray(ramp.astype(np.float32)).save(root / "b.tiff")
    result = invoke(tmp_path / "art", "data", "prepare", "--dataset", "folder", "--root",
                    str(root), "--size", "32", "--channels", "1")
    assert result.exit_code == 0, result.stderr
    (data,) = (tmp_path / "art" / "data").iterdir()
    images = np.load(data / "images.npy")
    assert images.shape == (2, 32, 32, 1)
    for image in images:  # the ramp at 8 bits, not clipped to white (mean 254)
        assert abs(image.mean() - 127.5) < 1.0 and image.max() == 255 and image.min() == 0


def test_a_non_finite_loss_stops_the_run_keeping_the_last_finite_checkpoint(tmp_path,
                                                                             monkeypatch):
    import torch

    from probe import train
    from probe.config import DataConfig, ModelConfig, RunConfig, SubsetConfig, TrainConfig
    from probe.errors import ProbeError

    calls = []
    real = train.training_loss

    def diverging(model, x0):
        calls.append(1)
        loss = real(model, x0)
        return loss * float("nan") if len(calls) > 3 else loss

    monkeypatch.setattr(train, "training_loss", diverging)
    cfg = RunConfig(data=DataConfig(dataset="digits", size=8),
                    subsets=SubsetConfig(ns=(4,), test_size=16),
                    model=ModelConfig(arch="dit-tiny/4"),
                    train=TrainConfig(n=4, steps=8, batch=4, checkpoint_every=2, sample_grid=0,
                                      log_every=100))
    store = Artifacts.at(tmp_path)
    with pytest.raises(ProbeError, match=r"non-finite .* before step 4 .*step-0000002"):
        train.train_run(cfg, store, progress=False, log=lambda m: None)
    (run,) = store.runs_dir.iterdir()
    (kept,) = (run / "checkpoints").iterdir()
    assert kept.name == "step-0000002" and not (run / "ema.safetensors").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(kept / "model.safetensors").values())


def test_a_damaged_checkpoint_of_a_finished_run_does_not_matter(trained, tmp_path):
    run = damaged(trained, tmp_path, lambda r: None)
    for state in run.glob("checkpoints/step-*/state.pt"):
        state.write_bytes(state.read_bytes()[:50])
    result = invoke(run.parents[1], "train-split", "--keep-checkpoints", *TINY)
    assert result.exit_code == 0, result.stderr
    assert "already trained" in result.stderr


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_it_resumed(trained, tmp_path):
    run = damaged(trained, tmp_path, lambda r: None)
    (run / "ema.safetensors").unlink()
    last = sorted(run.glob("checkpoints/step-*"))[-1]
    (last / "state.pt").write_bytes((last / "state.pt").read_bytes()[:50])
    result = invoke(run.parents[1], "train-split", "--keep-checkpoints", *TINY)
    assert result.exit_code == 0, result.stderr
    assert f"{last.name} is damaged" in result.stderr and "resuming at step 2" in result.stderr
    assert (run / "ema.safetensors").is_file()
    assert (last.parent / f"damaged-{last.name}").is_dir()


# ---------------------------------------------------------------------------------- dry run


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_dry_run_writes_nothing_and_prepares_nothing(tmp_path):
    import time

    art = tmp_path / "art"
    before = _listing(tmp_path)
    start = time.monotonic()
    result = invoke(art, "train-split", "--dataset", "digits", "--size", "4096", "--n", "10",
                    "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - start < 60
    assert "image_size = 4096" in result.stdout
    assert _listing(tmp_path) == before  # not even the artifacts root


def test_dry_run_refuses_what_the_real_run_would(trained, tmp_path):
    before = _listing(trained)
    run = _run_dir(trained)
    other = [a if a != "dit-tiny/4" else "dit-tiny/2" for a in TINY]
    assert_one_line_error(invoke(trained, "train-split", *other, "--resume", str(run),
                                 "--dry-run"), "is a checkpoint of dit-tiny/4")
    assert_one_line_error(invoke(trained, "train-split", *TINY, "--lr", "nan", "--dry-run"),
                          "train.lr")
    assert _listing(trained) == before


def test_a_deep_safetensors_header_is_one_line(trained, tmp_path):
    def deep(run: Path):
        body = b'{"__metadata__":{"arch":' + b"[" * 50000 + b"]" * 50000 + b"}}"
        (run / "ema.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    run = damaged(trained, tmp_path, deep)
    assert_one_line_error(invoke(run.parents[1], "sample", str(run)), "cannot read weights")
