"""Window presets (An et al.'s local-attention layouts): per-layer expansion, validation against
the model like any spec, the zoo and the CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from probe.cli import cli
from probe.config import ModelConfig, RunConfig
from probe.errors import ProbeError
from probe.models import zoo
from probe.models.windows import WINDOW_PRESETS
from probe.models.zoo import parse_windows
from probe.train import run_id

GRID = (32, 32)  # An et al.'s 32x32 images at patch 1

# Written out layer by layer for a 12-layer model (DiT-XS/1, DiT-S/1); 0 = global attention.
AT_DEPTH_12 = {
    "an-default": (3, 5, 7, 9, 11, 13, 0, 0, 0, 0, 0, 0),
    "an-head": (3, 5, 7, 9, 11, 13, 0, 0, 0, 0, 0, 0),
    "an-mix": (3, 0, 5, 0, 7, 0, 9, 0, 11, 0, 13, 0),
    "an-tail": (0, 0, 0, 0, 0, 0, 3, 5, 7, 9, 11, 13),
    "an-local-star": (3, 3, 3, 5, 5, 5, 7, 7, 7, 0, 0, 0),
    "an-large": (5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0),
    "an-small": (3, 3, 5, 7, 9, 11, 0, 0, 0, 0, 0, 0),
}


def test_every_preset_is_written_out():
    assert set(AT_DEPTH_12) == set(WINDOW_PRESETS)


@pytest.mark.parametrize("name, expected", AT_DEPTH_12.items())
def test_preset_expands_to_its_per_layer_windows(name, expected):
    assert parse_windows([name], 12, GRID) == expected
    assert parse_windows([f"  {name} "], 12, GRID) == expected


def test_placements_follow_the_depth():
    # DiT-XL depth: head stays on the first six, tail moves to the last six, mix spreads out.
    assert parse_windows(["an-default"], 28, GRID)[:7] == (3, 5, 7, 9, 11, 13, 0)
    tail = parse_windows(["an-tail"], 28, GRID)
    assert tail[22:] == (3, 5, 7, 9, 11, 13) and not any(tail[:22])
    mix = parse_windows(["an-mix"], 28, GRID)
    assert {i: w for i, w in enumerate(mix) if w} == {0: 3, 4: 5, 9: 7, 14: 9, 18: 11, 23: 13}
    # At exactly six layers every placement is the same.
    six = {parse_windows([n], 6, GRID) for n in ("an-head", "an-mix", "an-tail")}
    assert six == {(3, 5, 7, 9, 11, 13)}


def test_presets_combine_with_specs_in_order():
    assert parse_windows(["an-default", "0:5", "11:3"], 12, GRID) == (
        5, 5, 7, 9, 11, 13, 0, 0, 0, 0, 0, 3)
    assert parse_windows(["all:3", "an-tail"], 12, GRID) == (
        3, 3, 3, 3, 3, 3, 3, 5, 7, 9, 11, 13)


@pytest.mark.parametrize("name, depth, grid, message", [
    ("an-default", 4, GRID, "places 6 windows; this model has 4"),
    ("an-local-star", 8, GRID, "places 9 windows; this model has 8"),
    ("an-default", 12, (4, 4), r"'3:9' \(from an-default\): 9x9 is larger than the 4x4 token"),
    ("an-large", 12, (7, 7), r"'5:15' \(from an-large\): 15x15 is larger than the 7x7"),
    ("an-nope", 12, GRID, "or a preset name"),
])
def test_presets_are_validated_like_any_spec(name, depth, grid, message):
    with pytest.raises(ProbeError, match=message):
        parse_windows([name], depth, grid)


def test_a_preset_reaches_the_model():
    with torch.device("meta"):
        model = zoo.build(ModelConfig(arch="dit-xs/1", image_size=32, windows=("an-mix",)))
    assert tuple(b.attn.window for b in model.blocks) == AT_DEPTH_12["an-mix"]
    assert zoo.window_layout("dit-xs/1", 32) == (12, (32, 32))
    assert zoo.window_layout("dit-tiny/4", 16) == (4, (4, 4))
    assert zoo.window_layout("diffit-xs", 16)[0] == 5 and zoo.window_layout("udit-xs", 16)[0] == 0


def test_run_ids_keep_preset_names():
    cfg = RunConfig(model=ModelConfig(windows=("an-local-star", "0-1:3")))
    assert "-wan-local-star_0to1x3-" in run_id(cfg)


def test_models_windows_cli():
    result = CliRunner().invoke(cli, ["models", "windows"], catch_exceptions=False)
    assert result.exit_code == 0
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(rows) == set(WINDOW_PRESETS)
    assert "3 - 5 - 7 - 9 - 11 - 13 -" in rows["an-mix"]
    result = CliRunner().invoke(cli, ["models", "windows", "--arch", "dit-tiny/2",
                                      "--image-size", "16"], catch_exceptions=False)
    assert result.exit_code == 0 and "layer 0..3" in result.output
    assert "places 6 windows; this model has 4" in result.output
    result = CliRunner().invoke(cli, ["models", "windows", "--arch", "unet-xs"])
    assert result.exit_code == 2 and "takes no attention windows" in result.output
