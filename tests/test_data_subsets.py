"""Nested / disjoint subsets: properties over random partitions and Ns (hypothesis)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe import artifacts
from probe.artifacts import Artifacts
from probe.config import DataConfig, SubsetConfig
from probe.data.prepare import prepare
from probe.data.subsets import (
    make_subsets,
    max_n,
    read_subsets,
    subset_indices,
    subsets_table,
    write_subsets,
)
from probe.errors import ProbeError

TRAIN, VALID, TEST = 0, 1, 2


@st.composite
def cases(draw, with_test: bool | None = None):
    """(partition codes, SubsetConfig) where every N fits both splits."""
    size = draw(st.integers(4, 300))
    if with_test is None:
        with_test = draw(st.booleans())
    weights = np.array([draw(st.integers(1, 8)), draw(st.integers(0, 3)),
                        draw(st.integers(1, 4)) if with_test else 0], float)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    partition = rng.choice(3, size, p=weights / weights.sum()).astype(np.uint8)
    partition[:2] = TRAIN
    if with_test:
        partition[2] = TEST
    test_size = draw(st.integers(0, 60))
    own_test = (partition == TEST).any()
    pool = (partition != TEST).sum() if own_test else size - min(test_size, size // 5)
    ns = draw(st.lists(st.integers(1, max(1, pool // 2)), min_size=1, max_size=4))
    if pool // 2 == 0:
        ns = []
    seed = draw(st.integers(0, 2**32 - 1))
    return partition, SubsetConfig(tuple(ns), seed, test_size)


def _doc(partition, cfg):
    return make_subsets(partition, cfg, "fake", "0" * 64)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_nested_disjoint_and_test_held_out(case):
    partition, cfg = case
    if not cfg.ns:
        with pytest.raises(ProbeError):
            _doc(partition, cfg)
        return
    doc = _doc(partition, cfg)
    ns = sorted(set(cfg.ns))
    test = set(doc["test"])
    assert len(test) == len(doc["test"]) == doc["test_size"]
    for split in ("a", "b"):
        subsets = [subset_indices(doc, split, n) for n in ns]
        for n, idx in zip(ns, subsets):
            assert len(idx) == n and len(set(idx.tolist())) == n  # no repeats
            assert not test & set(idx.tolist())  # test disjoint from both splits
            assert idx.min() >= 0 and idx.max() < len(partition)
        for small, big in zip(subsets, subsets[1:]):  # nested: S_n is a prefix of S_m
            np.testing.assert_array_equal(big[: len(small)], small)
    a = set(subset_indices(doc, "a", ns[-1]).tolist())
    b = set(subset_indices(doc, "b", ns[-1]).tolist())
    assert not a & b

    own_test = np.nonzero(partition == TEST)[0]
    if len(own_test):  # the data set's own test partition; the pool is every other image
        assert test <= set(own_test.tolist())
        assert len(test) == min(cfg.test_size, len(own_test))
        assert all(partition[i] != TEST for i in a | b)
        assert doc["pool_size"] == (partition != TEST).sum()
    else:
        assert len(test) == min(cfg.test_size, len(partition) // 5)
        assert doc["pool_size"] == len(partition) - len(test)


@settings(max_examples=60, deadline=None)
@given(cases(), st.data())
def test_same_inputs_same_bytes_and_more_ns_stay_nested(case, data):
    partition, cfg = case
    if not cfg.ns:
        return
    one = json.dumps(_doc(partition, cfg), sort_keys=True)
    two = json.dumps(_doc(partition.copy(), SubsetConfig(cfg.ns[::-1], cfg.seed, cfg.test_size)),
                     sort_keys=True)
    assert one == two
    # Asking for one more N never changes the subsets already drawn.
    doc = json.loads(one)
    extra = data.draw(st.integers(1, max(cfg.ns)))
    more = _doc(partition, SubsetConfig((*cfg.ns, extra), cfg.seed, cfg.test_size))
    for split in ("a", "b"):
        for n, idx in doc["splits"][split].items():
            assert more["splits"][split][n] == idx
    assert more["test"] == doc["test"]


@settings(max_examples=60, deadline=None)
@given(cases(with_test=False), st.integers(1, 5))
def test_n_larger_than_a_split_is_an_error(case, excess):
    partition, cfg = case
    doc_pool = len(partition) - min(cfg.test_size, len(partition) // 5)
    too_big = max_n(doc_pool, "a") + excess
    with pytest.raises(ProbeError, match=f"N={too_big} is larger than split"):
        _doc(partition, SubsetConfig((too_big,), cfg.seed, cfg.test_size))


def test_seed_changes_the_draw():
    partition = np.zeros(200, np.uint8)
    a = _doc(partition, SubsetConfig((10,), seed=0))
    b = _doc(partition, SubsetConfig((10,), seed=1))
    assert a["splits"]["a"]["10"] != b["splits"]["a"]["10"]


@pytest.mark.parametrize("ns", [(0,), (-3, 5), ()])
def test_non_positive_or_missing_n(ns):
    with pytest.raises(ProbeError):
        _doc(np.zeros(50, np.uint8), SubsetConfig(ns))


def test_write_read_merge_and_table(tmp_path):
    prepared = prepare(DataConfig(dataset="lfw", size=8), Artifacts.at(tmp_path),
                       log=lambda m: None)
    path, doc = write_subsets(prepared, SubsetConfig((10,), seed=3, test_size=10))
    first = path.read_bytes()
    assert read_subsets(prepared) == doc
    _, merged = write_subsets(prepared, SubsetConfig((20,), seed=3, test_size=10))
    assert set(merged["splits"]["a"]) == {"10", "20"}  # earlier Ns are kept...
    assert merged["splits"]["a"]["10"] == doc["splits"]["a"]["10"]  # ...unchanged
    write_subsets(prepared, SubsetConfig((10,), seed=3, test_size=10))
    assert path.read_bytes() != first  # still holds N=20 as well
    assert artifacts.read_json(path)["splits"]["a"]["20"] == merged["splits"]["a"]["20"]

    table = subsets_table(merged)
    assert table["overlap_other_split"].sum() == 0 and table["overlap_test"].sum() == 0
    assert sorted(table.loc[table.split == "a", "n"]) == [10, 20]

    with pytest.raises(ProbeError, match="N=30"):
        subset_indices(merged, "a", 30)


def test_read_subsets_before_writing(tmp_path):
    prepared = prepare(DataConfig(dataset="lfw", size=8), Artifacts.at(tmp_path),
                       log=lambda m: None)
    with pytest.raises(ProbeError, match="probe data subsets"):
        read_subsets(prepared)
