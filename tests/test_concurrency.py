"""Two processes at once and full disks, as real processes: two trainers of one run, two probes
of one file; a 3 MB tmpfs as the artifacts root (root only: elsewhere the full-disk tests skip
with the reason). Every subprocess runs on one thread and under a timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from probe.metrics.tables import read_table

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TINY = ["--dataset", "digits", "--size", "8", "--arch", "dit-tiny/4", "--batch", "4",
        "--test-size", "16", "--sample-grid", "0", "--n", "10"]


def probe(root, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe", "--artifacts", str(root), *args],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def start(root, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "probe", "--artifacts", str(root), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("concurrent")
    done = probe(root, "train-split", *TINY, "--steps", "4", "--checkpoint-every", "2")
    assert done.returncode == 0, done.stderr
    return root


def test_a_second_trainer_of_a_run_is_refused_and_the_first_is_unharmed(tmp_path):
    first = start(tmp_path, "train-split", *TINY, "--steps", "500", "--checkpoint-every", "100",
                  "--log-every", "10")
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / ".locks").glob("run-*.lock")):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        second = probe(tmp_path, "train-split", *TINY, "--steps", "500",
                       "--checkpoint-every", "100", "--log-every", "10", timeout=120)
        out, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    if second.returncode == 0:  # started only after the first had finished: found it trained
        assert "already trained" in second.stderr
    else:
        assert second.returncode == 2
        line = one_line(second.stderr)
        assert f"is being trained by pid {first.pid}" in line
    (run,) = (tmp_path / "runs").iterdir()
    steps = [json.loads(ln)["step"] for ln in (run / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 500  # every stats line once
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000500"]
    assert not list(tmp_path.rglob("*~*"))  # no temp file of either


def test_two_identical_probes_at_once_both_succeed_and_write_one_table(trained, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trained, root)
    (run,) = (root / "runs").iterdir()
    info = json.loads((run / "config.json").read_text())
    info["data_dir"] = str(root / Path(info["data_dir"]).relative_to(trained))
    (run / "config.json").write_text(json.dumps(info))
    args = ["attention-locality", str(run), "--images", "2", "--sigmas", "0.1,0.5",
            "--no-figures"]
    both = [start(root, *args) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in both]
    for p, (_out, err) in zip(both, results):
        assert p.returncode == 0, err
    with h5py.File(root / "probes" / run.name / "attention.h5", "r") as f:
        assert f.attrs["run_id"] == run.name
    table = read_table(root / "tables" / "locality")
    single = read_table(root / "probes" / run.name / "locality")
    assert len(table) == len(single) > 0  # the run's rows once, not twice
    assert not list(root.rglob("*.partial")) and not list(root.rglob("*~*"))


# ------------------------------------------------------------------------------ full disks


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs (mounting needs root; otherwise the test skips and says why)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full-disk test needs root to mount a 3 MB tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_preparing_onto_a_full_disk_is_one_line_and_leaves_nothing(tiny_disk):
    small = probe(tiny_disk, "data", "prepare", "--dataset", "digits", "--size", "8")
    assert small.returncode == 0, small.stderr
    before = files(tiny_disk)
    big = probe(tiny_disk, "data", "prepare", "--dataset", "mnist", "--size", "32")
    assert big.returncode == 2, big.stderr
    line = one_line(big.stderr)
    assert "no space left on device while writing" in line and "MB needed" in line
    assert files(tiny_disk) == before  # no temp file, the digits cache untouched


def test_training_onto_a_full_disk_is_one_line_and_leaves_no_temp_file(tiny_disk):
    done = probe(tiny_disk, "train-split", *TINY, "--steps", "2", "--checkpoint-every", "1")
    assert done.returncode == 2, done.stderr
    assert "no space left on device while writing" in one_line(done.stderr)
    assert not [p for p in tiny_disk.rglob("*") if "~" in p.name]


def test_probing_onto_a_full_disk_is_one_line_and_leaves_no_partial_file(trained, tiny_disk):
    (run,) = (trained / "runs").iterdir()
    for fill_kb in (3066, 3000, 2980):
        shutil.rmtree(tiny_disk / "probes", ignore_errors=True)
        shutil.rmtree(tiny_disk / "tables", ignore_errors=True)
        (tiny_disk / "filler").unlink(missing_ok=True)
        (tiny_disk / "filler").write_bytes(b"\0" * fill_kb * 1024)
        done = probe(tiny_disk, "jacobian-basis", str(run), "--images", "2", "--sigmas",
                     "0.1,0.2", "--k", "8", "--no-figures")
        assert done.returncode == 2, (fill_kb, done.returncode, done.stderr[-2000:])
        assert "no space left on device while writing" in one_line(done.stderr)
        assert not list(tiny_disk.rglob("*.partial"))
        assert not [p for p in tiny_disk.rglob("*") if "~" in p.name]


def test_a_read_only_artifacts_root_is_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        for args in (["data", "prepare", "--dataset", "digits", "--size", "8"],
                     ["train-split", *TINY, "--steps", "2"], ["report"]):
            result = probe(mount, *args)
            assert result.returncode == 2, result.stderr
            assert "Read-only file system" in one_line(result.stderr)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
