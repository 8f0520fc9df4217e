"""Progress off a terminal: whole lines every ~10 % of a run (or every --log-every steps when
coarser), no carriage returns, and `run: PATH` on stdout on a line of its own."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from probe.progress import reporter, tenths

LINE = re.compile(r"(?P<run>\S+): step (?P<step>\d+)/(?P<total>\d+) \(\d+%\), loss [\d.]+, "
                  r"\d+ img/s")


def _report(total: int, steps, start: int = 0) -> list[str]:
    stream = io.StringIO()  # not a TTY
    update = reporter(True, start, total, "run-x", stream)
    for step in steps:
        update(step, 0.5, 100.0)
    update(None)
    return stream.getvalue().splitlines()


def test_plain_lines_every_tenth_or_every_report_when_coarser():
    assert tenths(3000) == [300, 600, 900, 1200, 1500, 1800, 2100, 2400, 2700, 3000]
    assert tenths(7) == [1, 2, 3, 4, 5, 6, 7]
    lines = _report(3000, range(50, 3001, 50))  # --log-every 50: finer than a tenth
    assert [int(LINE.fullmatch(ln)["step"]) for ln in lines] == tenths(3000)
    assert lines[0] == "run-x: step 300/3000 (10%), loss 0.5000, 100 img/s"
    lines = _report(3000, [*range(700, 3000, 700), 3000])  # --log-every 700: coarser
    assert [int(LINE.fullmatch(ln)["step"]) for ln in lines] == [700, 1400, 2100, 2800, 3000]
    lines = _report(3000, range(1250, 3001, 50), start=1200)  # resumed: the tenths still left
    assert [int(LINE.fullmatch(ln)["step"]) for ln in lines] == tenths(3000)[4:]


def test_a_terminal_keeps_the_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    update = reporter(True, 0, 10, "run-x", stream)
    update(5, 0.5, 100.0)
    update(None)
    assert "\r" in stream.getvalue() and "run-x:" in stream.getvalue()


def test_disabled_reporter_prints_nothing():
    stream = io.StringIO()
    update = reporter(False, 0, 10, "run-x", stream)
    update(10, 0.5, 1.0)
    assert stream.getvalue() == ""


def _train_split(root, steps: int) -> list[str]:
    return [sys.executable, "-m", "probe", "--artifacts", str(root), "train-split", "--n", "2",
            "--split", "both", "--dataset", "digits", "--size", "8", "--arch", "dit-xs/4",
            "--steps", str(steps), "--batch", "4", "--log-every", "1", "--sample-grid", "0",
            "--test-size", "16"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
OTHER = ("preparing digits: ",)  # the data set's one-line log (stdout, as `probe data` has it)


@pytest.mark.slow
def test_train_split_streams_in_files_are_whole_lines(tmp_path):
    steps = 20
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        subprocess.run(_train_split(tmp_path / "art", steps), stdout=out, stderr=err, env=ENV,
                       check=True, timeout=600)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert "\r" not in stderr and "\r" not in stdout
    progress = [LINE.fullmatch(line) for line in stderr.splitlines()]
    assert all(progress), stderr
    runs = [ln.removeprefix("run: ") for ln in stdout.splitlines() if ln.startswith("run: ")]
    assert len(runs) == 2 and all(os.path.isdir(r) for r in runs)
    assert stdout.count("run: ") == 2  # never inside another line
    for run in runs:  # each run reported every tenth of its 20 steps, in order
        assert [int(m["step"]) for m in progress if m["run"] == os.path.basename(run)] == \
            list(range(2, steps + 1, 2))


@pytest.mark.slow
def test_train_split_streams_merged_are_whole_lines(tmp_path):
    # `2>&1 | tee log`: stdout and stderr into one pipe.
    merged = subprocess.run(_train_split(tmp_path / "art", 10), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=ENV, check=True, timeout=600,
                            text=True).stdout
    assert "\r" not in merged
    lines = merged.splitlines()
    runs = [ln for ln in lines if ln.startswith("run: ")]
    assert len(runs) == 2 and merged.count("run: ") == 2
    assert all(ln in runs or LINE.fullmatch(ln) or ln.startswith(OTHER) for ln in lines), lines
    assert sum(bool(LINE.fullmatch(ln)) for ln in lines) == 20
