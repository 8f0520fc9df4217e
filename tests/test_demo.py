"""The demo experiment, cut down with --set: every table and figure family the README lists is
written on a fresh artifacts folder, the cross-probe join included."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from probe.cli import cli

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo.toml"
SMALL = {"steps": "40", "dit_steps": "4", "n_large": "40", "samples": "8", "images": "8"}


def test_demo_writes_every_table_and_the_report(tmp_path):
    args = ["--artifacts", str(tmp_path), "experiment", str(DEMO)]
    for key, value in SMALL.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr + result.stdout[-2000:]
    tables = {p.stem for p in (tmp_path / "tables").glob("*.parquet")}
    assert tables == {"generalization", "basis", "locality", "attribution", "locality_gap",
                      "head_locality"}
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith("- N = 10 (bf-unet-xs): ")
    figures = {p.name for p in (tmp_path / "figures").rglob("*.png")}
    assert {"generalization-sample-pairs_bf-unet-xs.png", "spectra.png",
            "attribution_heads_vs_locality.png"} <= figures
    assert all((run / "curves.png").is_file() for run in (tmp_path / "runs").iterdir()
               if run.is_dir())
