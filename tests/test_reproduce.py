"""`probe reproduce`: every target lists and dry-runs at both scales, bad input is one line, a
cut-down target runs end to end and its check reads its tables."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from probe import reproduce
from probe.artifacts import Artifacts
from probe.cli import cli
from probe.report import checks
from tests.helpers import assert_one_line_error

TARGETS = sorted(reproduce.targets())
WANTED = {"kadkhodaie-fig2", "kadkhodaie-similarity", "kadkhodaie-calpha", "kadkhodaie-disks",
          "kadkhodaie-gahb", "an-fig1", "an-psnr-gap", "an-locality", "an-windows", "kamb-els"}


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(root), "reproduce", *args])


def test_every_target_of_both_papers_is_listed_with_its_figure_and_cost(tmp_path):
    assert WANTED <= set(TARGETS)
    result = invoke(tmp_path, "--list")
    assert result.exit_code == 0, result.stderr
    for name, doc in reproduce.targets().items():
        assert name in result.stdout and doc["paper"] in result.stdout
        assert doc["check"] in checks.CHECKS
        assert {"laptop", "paper"} <= set(doc["scale"])


@pytest.mark.parametrize("scale", ["laptop", "paper"])
@pytest.mark.parametrize("name", TARGETS)
def test_every_target_dry_runs_at_both_scales_and_writes_nothing(tmp_path, name, scale):
    result = invoke(tmp_path, name, "--scale", scale, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "train-split" in result.stdout and "${" not in result.stdout
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_bad_input_is_one_line(tmp_path):
    assert_one_line_error(invoke(tmp_path, "nope"), "unknown target", "--list")
    assert_one_line_error(invoke(tmp_path, "an-windows", "--scale", "paper"), "--set root=DIR")
    assert_one_line_error(invoke(tmp_path, "an-windows", "--scale", "paper", "--set",
                                 f"root={tmp_path / 'missing'}"), "no such folder")
    assert_one_line_error(invoke(tmp_path, "an-windows", "--set", "bogus=1"),
                          "not a variable of target an-windows")
    assert_one_line_error(invoke(tmp_path), "NAME, --all or --list")


def test_a_cut_down_target_runs_end_to_end_and_is_checked(tmp_path):
    store = Artifacts.at(tmp_path)
    small = {"data": "--size 8 --count 200 --test-size 16", "n": "64", "steps": "30",
             "arch": "bf-unet-xs"}
    runs = reproduce.run_target("kadkhodaie-disks", store, "laptop", small, echo=lambda m: None)
    assert len(runs) == 1 and next(iter(runs.values()))["data"]["dataset"] == "disks"
    verdict = reproduce.check_target("kadkhodaie-disks", store, runs)
    assert "eigenvalues above 1/2" in verdict.reason
    assert verdict.numbers["sigma"] == pytest.approx(0.02)
    # the CLI reruns it at once (the run is finished) and reports the verdict's line
    docs = tmp_path / "docs"
    args = ["kadkhodaie-disks", "--check", "--publish", str(docs),
            *(f"--set={k}={v}" for k, v in small.items())]
    result = invoke(tmp_path, *args)
    assert result.exit_code in (0, 1) and "check " in result.stdout, result.stderr
    if result.exit_code == 1:
        assert result.stderr.splitlines()[-1].startswith("error: kadkhodaie-disks: ")
    published = json.loads((docs / "kadkhodaie-disks" / "verdict.json").read_text())
    assert published["runs"] == sorted(runs) and published["scale"] == "laptop"
    assert published["command"].startswith("probe") and published["wall_s"] >= 0
    assert (docs / "kadkhodaie-disks" / "basis.csv").is_file()
    (docs / "NOTES.md").write_text("## Notes\nby hand")
    assert invoke(tmp_path, "--summarize", str(docs)).exit_code == 0
    summary = (docs / "README.md").read_text()
    assert "| [kadkhodaie-disks](kadkhodaie-disks/) |" in summary and "by hand" in summary


def test_checks_hold_and_fail_on_tables_with_known_answers(tmp_path):
    import pandas as pd

    from probe.metrics.tables import write_table

    store = Artifacts.at(tmp_path)
    rows = []
    for n, copies, similarity in ((10, 0.95, 0.05), (100, 0.4, 0.5), (1000, 0.0, 0.9)):
        for split in "ab":
            run = f"r{n}{split}"
            rows += [{"run": run, "arch": "u", "n": n, "metric": "memorized_fraction_normalised",
                      "value": copies, "sigma": float("nan")},
                     {"run": run, "arch": "u", "n": n, "metric": "similarity_normalised_median",
                      "value": similarity, "sigma": float("nan")}]
    write_table(pd.DataFrame(rows), store.table("generalization"))
    runs = {r["run"]: {} for r in rows}
    verdict = checks.memorization_transition(store, runs)
    assert verdict.ok and verdict.numbers["transition_n"] == 100
    flat = pd.DataFrame([{**r, "value": 0.5} if r["metric"].startswith("similarity") else r
                         for r in rows])
    write_table(flat, store.table("generalization"))
    assert not checks.memorization_transition(store, runs).ok


def test_the_calpha_slope_of_the_optimal_denoiser_is_alpha_over_alpha_plus_one():
    import numpy as np
    import pandas as pd

    alpha = 2.0
    sigmas = np.array([0.02, 0.04, 0.08, 0.16])
    psnr_in = 10 * np.log10(4 / sigmas**2)
    out = 3.0 + alpha / (alpha + 1) * psnr_in  # an MSE falling as sigma^(2 alpha / (alpha + 1))
    df = pd.DataFrame({"metric": "psnr_test", "sigma": sigmas, "value": out})
    assert checks.psnr_slope(df) == pytest.approx(2 / 3)


def test_the_windows_check_reads_gaps_and_reports_fid_beside_them(tmp_path):
    import pandas as pd

    from probe.metrics.tables import write_table

    store = Artifacts.at(tmp_path)
    rows, runs = [], {}
    for n, gaps in ((10, (5.0, 4.0)), (1000, (0.3, 0.2))):
        for windowed, gap in zip((False, True), gaps):
            run = f"r{n}{'w' if windowed else 'g'}"
            runs[run] = {"model": {"windows": [[0, 3]] if windowed else []}}
            rows += [{"run": run, "n": n, "metric": "psnr_gap_mean", "value": gap, "note": ""},
                     {"run": run, "n": n, "metric": "fid", "value": 10 * gap,
                      "note": "fid-digits: f.pt"}]
    write_table(pd.DataFrame(rows), store.table("generalization"))
    verdict = checks.windows_lower_gap(store, runs)
    assert verdict.ok and verdict.numbers["gap_change_small_n"] == pytest.approx(-1.0)
    assert verdict.numbers["fid"]["N=10 windows"] == pytest.approx(40.0)
    assert "FID (fid-digits) global -> windows: N = 10 50.0 -> 40.0" in verdict.reason
    higher = pd.DataFrame([{**r, "value": 6.0} if r["run"] == "r10w" else r for r in rows])
    write_table(higher, store.table("generalization"))
    assert not checks.windows_lower_gap(store, runs).ok


def test_steps_run_at_their_scales_and_see_the_artifacts_root(tmp_path):
    from probe.experiments import run_steps

    doc = {"step": [{"run": ["data", "show", "--dataset", "${where}"], "scales": ["paper"]},
                    {"run": ["data", "subsets", "--help", "${artifacts}"]}]}
    echoed = []
    run_steps(doc, {"where": "x"}, str(tmp_path), dry_run=True, echo=echoed.append,
              scale="laptop")
    assert "skipped at laptop scale" in echoed[0]
    assert echoed[1].endswith(f"--help {tmp_path}")


def test_all_targets_dry_run_together_and_share_their_overrides(tmp_path):
    result = invoke(tmp_path, "--all", "--dry-run", "--set", "steps=7")
    assert result.exit_code == 0, result.stderr
    alone = {name: invoke(tmp_path, name, "--dry-run", "--set", "steps=7").stdout.count(
        "--steps 7") for name in TARGETS}
    assert all(alone.values())  # every target trains for ${steps}
    assert result.stdout.count("--steps 7") == sum(alone.values())
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    assert_one_line_error(invoke(tmp_path, "--all", "--dry-run", "--set", "bogus=1"),
                          "not a variable of any target")
    assert_one_line_error(invoke(tmp_path, "--all", "an-fig1"), "NAME, --all or --list")


def test_all_goes_on_past_a_target_that_stops_on_an_error(tmp_path, monkeypatch):
    from probe.errors import ProbeError

    ran = []

    def fake_run(name, *args, **kwargs):
        ran.append(name)
        if name == TARGETS[1]:
            raise ProbeError("a step failed")
        return {}

    monkeypatch.setattr(reproduce, "run_target", fake_run)
    monkeypatch.setattr(reproduce, "check_target",
                        lambda *a, **k: checks.Verdict(True, "fine", {}))
    result = invoke(tmp_path, "--all", "--check")
    assert ran == TARGETS
    assert_one_line_error(result, "1 of", TARGETS[1], "a step failed")


@pytest.mark.parametrize("scales", ['["lapotp"]', "[]"])
def test_a_step_limited_to_no_known_scale_is_refused(tmp_path, scales):
    from probe.errors import ProbeError

    (tmp_path / "t.toml").write_text(f'name = "t"\n[[step]]\nscales = {scales}\n'
                                     'run = ["data", "show"]\n')
    with pytest.raises(ProbeError, match="scales must name some of laptop, paper"):
        reproduce.targets(tmp_path)
