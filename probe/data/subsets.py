"""Nested training subsets and their disjoint twins, from one seeded permutation.

Shape of `subsets.json` (indices are rows of the cached array)::

    {"dataset": ..., "data_sha256": ..., "seed": ..., "test_size": ..., "pool_size": ...,
     "splits": {"a": {"10": [...], "100": [...]}, "b": {...}}, "test": [...]}

Split a takes the first N of the permuted training pool and split b the first N of its second
half, so S_10 in a is a prefix of S_100 in a (nested), and a and b never share an image. The test
set is the data set's own test partition where it has one, otherwise the tail of the permutation
of the whole set, held out before the pool is formed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probe import artifacts
from probe.artifacts import SUBSETS
from probe.config import SubsetConfig
from probe.data.prepare import Prepared
from probe.data.sources import PARTITIONS
from probe.errors import ProbeError

SPLITS = ("a", "b")


def max_n(pool_size: int, split: str) -> int:
    """Largest N a split can hold: a gets the first half of the pool, b the second."""
    half = pool_size // 2
    return half if split == "a" else pool_size - half


def make_subsets(partition: np.ndarray, cfg: SubsetConfig, dataset: str, data_sha256: str
                 ) -> dict:
    """The subsets document for a set with these partition codes (0 train, 1 valid, 2 test)."""
    ns = sorted(set(cfg.ns))
    if not ns:
        raise ProbeError("give at least one --n")
    if ns[0] <= 0:
        raise ProbeError(f"--n must be positive, got {ns[0]}")
    if cfg.test_size < 0:
        raise ProbeError(f"--test-size must be >= 0, got {cfg.test_size}")
    rng = np.random.default_rng(cfg.seed)
    test_code = PARTITIONS.index("test")
    own_test = np.nonzero(partition == test_code)[0]
    if len(own_test):
        pool = np.nonzero(partition != test_code)[0]  # train + valid: every non-test image
        test = rng.permutation(own_test)[: cfg.test_size]
        pool = pool[rng.permutation(len(pool))]
    else:
        everything = rng.permutation(len(partition))
        test_size = min(cfg.test_size, len(partition) // 5)
        test = everything[len(everything) - test_size :] if test_size else everything[:0]
        pool = everything[: len(everything) - test_size]
    splits = {}
    half = len(pool) // 2
    for split, base in (("a", pool[:half]), ("b", pool[half:])):
        too_big = [n for n in ns if n > len(base)]
        if too_big:
            raise ProbeError(
                f"N={too_big[0]} is larger than split {split} allows for {dataset}: "
                f"its pool holds {len(pool)} training images, {len(base)} per split")
        splits[split] = {str(n): base[:n].tolist() for n in ns}
    return {
        "dataset": dataset,
        "data_sha256": data_sha256,
        "seed": cfg.seed,
        "test_size": int(len(test)),
        "pool_size": int(len(pool)),
        "splits": splits,
        "test": test.tolist(),
    }


def write_subsets(prepared: Prepared, cfg: SubsetConfig, write: bool = True
                  ) -> tuple[Path, dict]:
    """Write `subsets.json` beside the cached data; Ns already there for the same seed and test
    size are kept (they are prefixes of the same permutation, so merging never contradicts).
    `write=False` computes the same document without writing it (DDP ranks other than 0)."""
    path = prepared.directory / SUBSETS
    ns = set(cfg.ns)
    if path.is_file():
        old = artifacts.read_json(path)
        if (old.get("seed"), old.get("data_sha256")) == (cfg.seed, prepared.sha256) and \
                old.get("requested_test_size") == cfg.test_size:
            ns |= {int(n) for n in old["splits"]["a"]}
    doc = make_subsets(prepared.partition, SubsetConfig(tuple(sorted(ns)), cfg.seed,
                                                        cfg.test_size),
                       prepared.manifest["source"], prepared.sha256)
    doc["requested_test_size"] = cfg.test_size
    if write:
        artifacts.write_json(path, doc)
    return path, doc


def read_subsets(prepared: Prepared) -> dict:
    path = prepared.directory / SUBSETS
    if not path.is_file():
        raise ProbeError(f"no subsets for {prepared.directory.name}; run `probe data subsets`")
    return artifacts.read_json(path)


def subset_indices(doc: dict, split: str, n: int) -> np.ndarray:
    try:
        return np.asarray(doc["splits"][split][str(n)], dtype=np.int64)
    except KeyError:
        raise ProbeError(f"no subset N={n} in split {split}; have "
                         f"{', '.join(doc['splits'].get(split, {}))}") from None


def subsets_table(doc: dict):
    """One row per split x N: the size, first indices, and overlap checks, for `data show`."""
    import pandas as pd

    rows = []
    a_all = set().union(*map(set, doc["splits"]["a"].values()))
    b_all = set().union(*map(set, doc["splits"]["b"].values()))
    test = set(doc["test"])
    for split, by_n in doc["splits"].items():
        for n, idx in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            other = b_all if split == "a" else a_all
            rows.append({"split": split, "n": int(n), "first": ", ".join(map(str, idx[:5])),
                         "overlap_other_split": len(set(idx) & other),
                         "overlap_test": len(set(idx) & test)})
    rows.append({"split": "test", "n": len(doc["test"]),
                 "first": ", ".join(map(str, doc["test"][:5])), "overlap_other_split": 0,
                 "overlap_test": 0})
    return pd.DataFrame(rows)
