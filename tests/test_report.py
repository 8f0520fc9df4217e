"""`probe report` summarises the tables it finds, averaging per model and metric."""

import pandas as pd

from probe.artifacts import Artifacts
from probe.metrics.tables import write_table
from probe.report.summary import build_report, summarize


def test_summary_averages_per_model_and_metric(tmp_path):
    df = pd.DataFrame({
        "run": ["r1", "r1", "r2", "r2"], "arch": ["dit-tiny/2"] * 4, "n": [10, 10, 1000, 1000],
        "split": ["a"] * 4, "sigma": [0.1, 1.0, 0.1, 1.0], "metric": ["psnr_gap"] * 4,
        "value": [2.0, 4.0, 0.5, 1.5]})
    wide = summarize(df, ("psnr_gap",))
    assert wide.set_index("n")["psnr_gap"].to_dict() == {"10": 3.0, "1000": 1.0}

    store = Artifacts.at(tmp_path)
    write_table(df, store.tables_dir / "generalization")
    path, text = build_report(store)
    assert path.read_text().strip() == text.strip()
    assert "## generalization" in text and "| dit-tiny/2 | 10 | a | 3 |" in text


def test_report_without_tables_says_so(tmp_path):
    _, text = build_report(Artifacts.at(tmp_path))
    assert "No tables yet" in text
