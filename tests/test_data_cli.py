"""`probe data ...` end to end: outputs, determinism, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from probe.cli import cli
from tests.helpers import assert_one_line_error


def run(artifacts: Path, *args: str):
    return CliRunner().invoke(cli, ["--artifacts", str(artifacts), "data", *args])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_prepare_subsets_show(tmp_path, data_celeba_root):
    art = tmp_path / "art"
    args = ["--dataset", "celeba", "--root", str(data_celeba_root), "--size", "8"]
    r = run(art, "prepare", *args)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert "14 images, 8x8x3" in r.stdout
    r = run(art, "subsets", *args, "--n", "2", "--n", "1", "--test-size", "2")
    assert r.exit_code == 0, r.stderr
    path = Path(r.stdout.strip().split("subsets: ")[-1])
    doc = json.loads(path.read_text())
    assert set(doc["splits"]["a"]) == {"1", "2"} and len(doc["test"]) == 2
    partition = np.load(path.parent / "partition.npy")
    assert all(partition[i] == 2 for i in doc["test"])  # CelebA's own test partition
    r = run(art, "show", *args)
    assert r.exit_code == 0, r.stderr
    assert "pool 11, test 2" in r.stdout  # train + valid and "overlap_other_split" in r.stdout


def test_dry_run_writes_nothing(tmp_path):
    r = run(tmp_path / "art", "subsets", "--dataset", "disks", "--count", "10", "--n", "3",
            "--dry-run")
    assert r.exit_code == 0
    assert 'dataset = "disks"' in r.stdout and "ns = [" in r.stdout
    assert not (tmp_path / "art").exists()


def test_subsets_json_is_byte_identical(tmp_path):
    args = ["subsets", "--dataset", "c-alpha", "--count", "60", "--size", "8", "--n", "5",
            "--n", "20", "--seed", "11", "--test-size", "7"]
    out = []
    for where in ("one", "two"):
        r = run(tmp_path / where, *args)
        assert r.exit_code == 0, r.stderr
        out.append(Path(r.stdout.strip().split("subsets: ")[-1]))
    assert out[0] != out[1]
    assert out[0].read_bytes() == out[1].read_bytes()
    before = out[0].read_bytes()
    assert run(tmp_path / "one", *args).exit_code == 0  # again in place: same bytes
    assert out[0].read_bytes() == before
    r = run(tmp_path / "three", *[a if a != "11" else "12" for a in args])
    assert Path(r.stdout.strip().split("subsets: ")[-1]).read_bytes() != before


# ------------------------------------------------------------------------------- bad input


def test_missing_root(tmp_path):
    r = run(tmp_path / "art", "prepare", "--dataset", "folder", "--root",
            str(tmp_path / "nowhere"))
    assert_one_line_error(r, "does not exist", "nowhere")
    assert_one_line_error(run(tmp_path / "art", "prepare", "--dataset", "celeba"),
                          "--root is required")
    (tmp_path / "file.txt").write_text("x")
    assert_one_line_error(run(tmp_path / "art", "prepare", "--dataset", "imagenet", "--root",
                              str(tmp_path / "file.txt")), "not a directory")


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    r = run(tmp_path / "art", "prepare", "--dataset", "folder", "--root", str(tmp_path / "empty"))
    assert_one_line_error(r, "no images found")
    assert not (tmp_path / "art" / "data").exists() or not any((tmp_path / "art" / "data")
                                                               .iterdir())


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_is_named(tmp_path, data_image_folder, kind):
    bad = data_image_folder / "sub" / "broken.jpg"
    if kind == "garbage":
        bad.write_bytes(b"this is not a jpeg" * 10)
    else:
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    r = run(tmp_path / "art", "prepare", "--dataset", "folder", "--root", str(data_image_folder))
    assert_one_line_error(r, "sub/broken.jpg")
    data_dir = tmp_path / "art" / "data"
    assert not data_dir.exists() or not any(data_dir.iterdir())  # no half-made cache


def test_show_before_subsets(tmp_path):
    assert run(tmp_path, "prepare", "--dataset", "lfw", "--size", "8").exit_code == 0
    assert_one_line_error(run(tmp_path, "show", "--dataset", "lfw", "--size", "8"),
                          "probe data subsets")


def test_unknown_dataset(tmp_path):
    assert_one_line_error(run(tmp_path, "prepare", "--dataset", "cifar-10"), "cifar-10")


@pytest.mark.parametrize("n", ["0", "-4", "ten"])
def test_bad_n(tmp_path, n):
    r = run(tmp_path / "art", "subsets", "--dataset", "lfw", "--n", "5", "--n", n)
    assert_one_line_error(r, "--n")
    assert not (tmp_path / "art").exists()  # refused before any preparing


@pytest.mark.parametrize("option", [("--size", "1"), ("--dedup", "1.5"), ("--channels", "2"),
                                    ("--count", "0")])
def test_bad_options(tmp_path, option):
    assert_one_line_error(run(tmp_path, "prepare", "--dataset", "disks", *option), option[0])


def test_failures_leave_existing_outputs_intact(tmp_path, data_celeba_root):
    art = tmp_path / "art"
    args = ["--dataset", "celeba", "--root", str(data_celeba_root), "--size", "8"]
    assert run(art, "subsets", *args, "--n", "3").exit_code == 0
    before = snapshot(art)
    assert {Path(k).name for k in before} >= {"images.npy", "partition.npy", "keys.txt",
                                              "manifest.json", "subsets.json"}
    # CelebA's 9 training images give 4 per split: N=5 does not fit split a.
    assert_one_line_error(run(art, "subsets", *args, "--n", "6"), "N=6", "split a")
    assert_one_line_error(run(art, "subsets", *args, "--n", "0"), "--n")
    # A corrupt image breaks a new preparation, but not the cache made before it.
    (data_celeba_root / "img_align_celeba" / "000004.jpg").write_bytes(b"\xff\xd8 broken")
    assert_one_line_error(run(art, "prepare", *args[:-1], "12"), "000004.jpg")
    assert_one_line_error(run(art, "subsets", *args[:-1], "12", "--n", "2"), "000004.jpg")
    (data_celeba_root / "list_eval_partition.txt").unlink()
    assert_one_line_error(run(art, "subsets", *args, "--n", "2"), "list_eval_partition.txt")
    assert snapshot(art) == before


def test_real_process_stderr_is_one_line(tmp_path, data_image_folder):
    """Through a real interpreter: no warnings or progress lines leak onto stderr."""
    (data_image_folder / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    proc = subprocess.run(
        [sys.executable, "-m", "probe", "--artifacts", str(tmp_path / "art"), "data", "prepare",
         "--dataset", "folder", "--root", str(data_image_folder), "--size", "8"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "zz.png" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
