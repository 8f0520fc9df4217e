"""Two processes at once, killed writers, shared folders: locks (probe.locks), owned temp files
(probe.artifacts), the umask, deterministic weight hashes, locked and self-repairing tables."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from probe import artifacts, checkpoints, locks
from probe.artifacts import Artifacts
from probe.errors import ProbeError
from probe.metrics import tables


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------------- locks


def test_second_holder_is_refused_with_the_holders_pid_and_host(tmp_path):
    path = tmp_path / ".locks" / "run-x.lock"
    with locks.hold(path, "run x is being trained"):
        with pytest.raises(ProbeError, match=rf"run x is being trained by pid {os.getpid()} "
                                             rf"on {locks.HOST}"):
            with locks.hold(path, "run x is being trained"):
                pass
    with locks.hold(path, "run x is being trained"):  # released: taken again
        pass


def _hold_forever(path, ready):
    with locks.hold(path, "busy"):
        ready.set()
        time.sleep(60)


def test_a_lock_of_a_killed_holder_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    ready = multiprocessing.Event()
    child = multiprocessing.get_context("fork").Process(target=_hold_forever, args=(path, ready))
    child.start()
    try:
        assert ready.wait(20)
        with pytest.raises(ProbeError, match=f"pid {child.pid}"):
            with locks.hold(path, "busy"):
                pass
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        with locks.hold(path, "busy"):  # the stale lock file (a dead pid's) is no obstacle
            assert path.read_text().split()[0] == str(os.getpid())
    finally:
        if child.is_alive():
            child.kill()


def test_a_waiting_holder_waits_for_the_first(tmp_path):
    path, said = tmp_path / "t.lock", []
    ready = multiprocessing.Event()
    child = multiprocessing.get_context("fork").Process(target=_hold_forever, args=(path, ready))
    child.start()
    try:
        assert ready.wait(20)
        start = time.monotonic()
        killer = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -9 {child.pid}"])
        with locks.hold(path, "table t is being written", wait=True, log=said.append):
            waited = time.monotonic() - start
        killer.wait()
        assert waited >= 0.4
        assert said == [f"table t is being written by pid {child.pid} on {locks.HOST}: "
                        "waiting for it"]
    finally:
        if child.is_alive():
            child.kill()


# ------------------------------------------------------------------------------ leftovers


def test_a_dead_writers_temp_files_are_removed_by_the_next_write(tmp_path):
    dead, host = _dead_pid(), locks.HOST
    dead_file = tmp_path / f".images.npy.~{dead}@{host}~abc.npy"
    dead_dir = tmp_path / f".step-0000010.~{dead}@{host}~xyz"
    live_file = tmp_path / f".images.npy.~{os.getpid()}@{host}~def.npy"
    elsewhere = tmp_path / f".images.npy.~{dead}@another-host~ghi.npy"
    for path in (dead_file, live_file, elsewhere):
        path.write_bytes(b"x" * 100)
    dead_dir.mkdir()
    (dead_dir / "state.pt").write_bytes(b"half")
    artifacts.write_text(tmp_path / "keys.txt", "a\n")
    assert not dead_file.exists() and not dead_dir.exists()
    assert live_file.exists() and elsewhere.exists()  # a live writer's, another host's
    assert (tmp_path / "keys.txt").read_text() == "a\n"


def test_a_killed_atomic_write_is_cleaned_up_by_the_next_one(tmp_path):
    target = tmp_path / "images.npy"
    code = ("import os, sys; from probe import artifacts\n"
            f"with artifacts.atomic_path({str(target)!r}) as t:\n"
            "    t.write_bytes(b'x' * 1000); os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code], timeout=60,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".images.npy.")]
    assert left.suffix == ".npy"
    artifacts.write_bytes(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy"]


def test_a_killed_checkpoint_directory_is_removed_by_the_next_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"
    root.mkdir()
    stale = root / f".step-0000005.~{_dead_pid()}@{locks.HOST}~abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    checkpoints.save_checkpoint(tmp_path, 10, model, model, opt, {"arch": "x"}, keep=False)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000010"]


# ----------------------------------------------------------------------------------- umask


@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_files_and_directories_honour_the_umask(tmp_path, group_umask):
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    artifacts.write_json(tmp_path / "a" / "config.json", {"x": 1})
    checkpoints.save_weights(tmp_path / "model.safetensors", model, {"arch": "x"})
    step = checkpoints.save_checkpoint(tmp_path, 3, model, model, opt, {}, keep=True)
    tables.write_table(pd.DataFrame({"run": ["r"], "v": [1.0]}), tmp_path / "t")
    from probe.formats.h5 import ResumableH5

    with ResumableH5(tmp_path / "p.h5", {"run_id": "r"}) as out:
        out.complete(out.begin("g"))
    files = [tmp_path / "a" / "config.json", tmp_path / "model.safetensors",
             step / "model.safetensors", step / "state.pt", tmp_path / "t.parquet",
             tmp_path / "t.csv", tmp_path / "p.h5"]
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files} == \
        {str(p.relative_to(tmp_path)): "0o664" for p in files}
    assert oct(step.stat().st_mode & 0o777) == "0o775"


# ---------------------------------------------------------------------- provenance hashes


def test_identical_weights_hash_identically_whatever_the_metadata_order(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    meta = {f"key{i}": {"nested": [i, "é"], "z": i} for i in range(12)}
    hashes = set()
    for i, order in enumerate([sorted(meta), sorted(meta, reverse=True)] * 3):
        path = tmp_path / f"w{i}.safetensors"
        checkpoints.save_weights(path, model, {k: meta[k] for k in order})
        hashes.add(artifacts.sha256_file(path))
    assert len(hashes) == 1
    assert checkpoints.read_metadata(path) == meta
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    checkpoints.load_weights(path, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values()))


def test_deeply_nested_metadata_is_read_as_text_not_a_recursion_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"arch": "[" * 100_000 + "]" * 100_000})
    assert checkpoints.read_metadata(path)["arch"].startswith("[[[")
    path.write_bytes(b"\x08" + b"\x00" * 7 + b"garbage!")
    with pytest.raises(ProbeError, match="cannot read weights"):
        checkpoints.read_metadata(path)


# ---------------------------------------------------------------------------------- tables


def _upserts(root: str, run: str, count: int) -> None:
    store = Artifacts.at(root)
    for i in range(count):
        tables.upsert(store, "locality", pd.DataFrame({"run": [run] * 3, "i": [i] * 3,
                                                       "v": [1.0, 2.0, 3.0]}))


def test_two_processes_upserting_one_table_both_land_their_rows(tmp_path):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_upserts, args=(str(tmp_path), run, 15))
               for run in ("run-a", "run-b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    df = tables.read_table(tmp_path / "tables" / "locality")
    assert sorted(df["run"].unique()) == ["run-a", "run-b"]
    assert len(df) == 6 and set(df["i"]) == {14}
    assert pd.read_csv(tmp_path / "tables" / "locality.csv").shape == (6, 3)


def test_a_damaged_table_is_named_set_aside_and_rebuilt_from_its_probe_files(tmp_path, capsys):
    store = Artifacts.at(tmp_path)
    for run in ("r1", "r2"):
        tables.write_table(pd.DataFrame({"run": [run], "v": [1.0]}),
                           store.probe_file(run, artifacts.LOCALITY_TABLE))
    store.tables_dir.mkdir()
    (store.tables_dir / "locality.parquet").write_bytes(b"PAR1 this is not parquet")
    df = tables.read_table(store.table("locality"))
    assert sorted(df["run"]) == ["r1", "r2"]
    err = capsys.readouterr().err
    assert "locality.parquet is damaged" in err and "rebuilt from 2 per-run table(s)" in err
    assert (store.tables_dir / "locality.parquet.damaged").is_file()
    assert sorted(tables.read_table(store.table("locality"))["run"]) == ["r1", "r2"]
    # an upsert onto a damaged table keeps the other runs' rows too
    (store.tables_dir / "locality.parquet").write_bytes(b"garbage")
    tables.upsert(store, "locality", pd.DataFrame({"run": ["r2"], "v": [5.0]}))
    df = tables.read_table(store.table("locality")).sort_values("run")
    assert df["v"].tolist() == [1.0, 5.0]
