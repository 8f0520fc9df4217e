"""fid-digits, the feature network laptop FID uses: it learns the digits from the training
partition only, its FID ranks corruptions in order, it travels as TorchScript with its
provenance, and `probe generalization --fid-weights` uses it on the runs of its data alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probe.artifacts import Artifacts
from probe.cli import cli
from probe.config import DataConfig, ModelConfig, RunConfig, SubsetConfig, TrainConfig
from probe.data.loader import to_model_range
from probe.data.prepare import labels, prepare
from probe.metrics import fid as F
from probe.metrics import fid_digits as FD
from probe.train import train_run
from tests.helpers import assert_one_line_error

DIGITS = DataConfig(dataset="digits", size=8)
HELD_OUT = SubsetConfig(test_size=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = Artifacts.at(tmp_path_factory.mktemp("fid-digits"))
    return store, FD.build(DIGITS, HELD_OUT, store, steps=300, log=lambda m: None)


def test_labels_follow_the_prepared_images(built):
    from sklearn.datasets import load_digits

    store, _ = built
    source = load_digits()
    got = labels(prepare(DIGITS, store), DIGITS)
    np.testing.assert_array_equal(got, source.target)
    # a dedup drops and keeps images: each kept image still carries its own label
    deduped = DataConfig(dataset="digits", size=8, dedup=0.9)
    prepared = prepare(deduped, store)
    kept = prepared.images[..., 0].reshape(len(prepared.images), -1)
    assert 100 < len(kept) < len(source.target)
    originals = np.round(source.images * (255 / 16)).astype(np.uint8).reshape(len(source.target),
                                                                               -1)
    matches = (kept[:, None, :] == originals[None]).all(-1)  # [kept, original]
    truth = [set(source.target[row]) for row in matches]
    got = labels(prepared, deduped)
    assert all(label in options for label, options in zip(got, truth))
    assert labels(prepare(DataConfig(dataset="lfw", size=8), store),
                  DataConfig(dataset="lfw", size=8)) is None


def test_it_learns_the_digits_without_seeing_the_held_out_ones(built):
    store, b = built
    m = b.meta
    assert m["network"] == "fid-digits" and m["classes"] == 10 and m["features"] == FD.FEATURES
    assert m["test_images"] == 300 and m["train_images"] == 1797 - 300
    assert m["test_accuracy"] >= 0.9, m["test_accuracy"]  # chance is 0.1
    # the file alone gives the same held-out accuracy (TorchScript round trip, labels by key)
    prepared = prepare(DIGITS, store)
    from probe.data.subsets import write_subsets

    test = np.sort(write_subsets(prepared, SubsetConfig(ns=(1,), test_size=300),
                                 write=False)[1]["test"])
    net = torch.jit.load(str(b.path))
    images = to_model_range(prepared.images)[test]
    got = FD.accuracy(net, images, torch.from_numpy(labels(prepared, DIGITS)[test]))
    assert got == pytest.approx(m["test_accuracy"])


def test_its_fid_ranks_corruptions_in_order(built):
    store, b = built
    extractor = F.load_feature_extractor(b.path)
    assert extractor.kind == "fid-digits" and extractor.meta["data_sha256"] == b.meta[
        "data_sha256"]
    x = to_model_range(prepare(DIGITS, store).images)
    gen = torch.Generator().manual_seed(0)
    x = x[torch.randperm(len(x), generator=gen)]
    real, other = extractor(x[:800]), x[800:1600]

    def fid_of(images):
        return F.fid(real, extractor(images.clamp(-1, 1)))

    same = fid_of(other)
    noisy = [fid_of(other + s * torch.randn(other.shape, generator=gen)) for s in (0.2, 0.5, 1)]
    one_digit = fid_of(other[:1].expand(len(other), -1, -1, -1))
    assert same < noisy[0] < noisy[1] < noisy[2], (same, noisy)
    assert one_digit > 3 * same  # a set of copies of one image is far from the data


def test_a_second_build_reuses_the_file(built):
    store, b = built
    mtime = b.path.stat().st_mtime_ns
    again = FD.build(DIGITS, HELD_OUT, store, steps=300, log=lambda m: None)
    assert again.reused and again.path == b.path and b.path.stat().st_mtime_ns == mtime


def test_sets_without_labels_are_refused(tmp_path):
    result = CliRunner().invoke(cli, ["--artifacts", str(tmp_path), "fid-digits",
                                      "--dataset", "disks", "--size", "8", "--count", "50"])
    assert_one_line_error(result, "disks has no labels")


def _run(store, dataset, test_size, **data):
    cfg = RunConfig(data=DataConfig(dataset=dataset, size=8, **data),
                    subsets=SubsetConfig(ns=(10,), test_size=test_size),
                    model=ModelConfig(arch="dit-tiny/4"),
                    train=TrainConfig(n=10, steps=2, batch=4, sample_grid=0,
                                      checkpoint_every=100))
    return train_run(cfg, store, progress=False, log=lambda msg: None)


def test_generalization_reports_fid_digits_on_its_own_data_only(built):
    store, b = built
    run = _run(store, "digits", 300)
    base = ["--artifacts", str(store.root), "generalization", "--sigmas", "0.1",
            "--images", "4", "--samples", "40", "--steps", "4", "--fid-weights", str(b.path)]
    result = CliRunner().invoke(cli, [*base, str(run)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_parquet(store.root / "tables" / "generalization.parquet")
    fid = table[(table.metric == "fid") & (table.run == run.name)]
    assert len(fid) == 1 and np.isfinite(fid.value.item()) and fid.value.item() > 0
    assert "fid-digits" in fid.note.item() and "inception" not in fid.note.item().lower()

    inside = _run(store, "digits", 200)  # a smaller held-out set: inside the network's
    result = CliRunner().invoke(cli, [*base, str(inside)])
    assert result.exit_code == 0 and "warning" not in result.stderr
    larger = _run(store, "digits", 400)  # capped at 359: 59 the network trained on
    result = CliRunner().invoke(cli, [*base, str(larger)])
    assert result.exit_code == 0 and "59 of" in result.stderr, result.stderr

    disks = _run(store, "disks", 20, count=100)
    result = CliRunner().invoke(cli, [*base, str(disks)])
    assert_one_line_error(result, "fid-digits network of digits 8px", "disks 8px")
