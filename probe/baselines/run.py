"""Analytic denoisers as Runs: a run directory without weights that every probe takes.

runs/<id>/config.json holds `baseline` (the BaselineConfig), the data set it was built from
(`data_dir`, `data_sha256`), N and split, and `source_run` when it was built from a run's
subset; subset.json lists the training rows (as a trained run's does); statistics.safetensors
holds what cannot be recomputed cheaply (the Wiener mean and eigenbasis). `load_baseline_run`
rebuilds the denoiser from those; probe.runs.load_run delegates here when config.json has a
`baseline` field. The run's "checkpoint hash" is the hash of everything that defines it
(options, subset, data, statistics), so probe files resume and pair as for trained runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import psutil
import torch
from safetensors.torch import load_file, save_file

from probe import artifacts
from probe.baselines.base import AnalyticDenoiser, TrainingImages
from probe.baselines.ideal import IdealDenoiser
from probe.baselines.local import LocalScoreDenoiser, PatchSchedule, check_patch
from probe.baselines.wiener import StationaryWiener, WienerDenoiser
from probe.config import BASELINE_KINDS, BOUNDARIES, BaselineConfig, from_dict, to_dict
from probe.data.loader import PreparedImages, gather, to_model_range
from probe.data.prepare import Prepared, load_prepared
from probe.data.subsets import read_subsets
from probe.errors import ProbeError

STATISTICS = "statistics.safetensors"
MEMORY_FRACTION = 0.5  # of the memory free now, what a baseline may hold
VALUE_RANGE = (-1.0, 1.0)


def available_memory() -> int:
    return int(psutil.virtual_memory().available)


def validate(cfg: BaselineConfig, shape: tuple[int, int, int]) -> None:
    """One line for a bad configuration, before anything is built or written."""
    if cfg.kind not in BASELINE_KINDS:
        raise ProbeError(f"unknown baseline {cfg.kind!r}; choose from {', '.join(BASELINE_KINDS)}")
    if cfg.boundary not in BOUNDARIES:
        raise ProbeError(f"--boundary must be one of {', '.join(BOUNDARIES)}")
    if cfg.chunk < 0:
        raise ProbeError(f"--chunk must be >= 0, got {cfg.chunk}")
    if cfg.kind in ("ls", "els"):
        for p in [cfg.patch, *(p for _, p in cfg.schedule)]:
            check_patch(int(p), shape)


def check_memory(kind: str, n: int, shape: tuple[int, int, int], chunk: int) -> None:
    """Refuse to hold more than memory allows: ideal/ls/els keep the training images (float32)
    unless `chunk` streams them from disk; wiener factorises them once in float64."""
    d = int(np.prod(shape))
    need = n * d * 8 if kind == "wiener" else (0 if chunk else n * d * 4)
    free = available_memory()
    if need > MEMORY_FRACTION * free:
        c, h, w = shape
        fix = "use a smaller --n" if kind == "wiener" else \
            "pass --chunk ROWS to stream the training images from disk in blocks of ROWS"
        raise ProbeError(f"{kind} on {n} training images of {c}x{h}x{w} needs "
                         f"{need / 2**30:.1f} GiB in memory, more than half of the "
                         f"{free / 2**30:.1f} GiB free: {fix}")


def training_images(prepared: Prepared, rows: np.ndarray, chunk: int = 0) -> TrainingImages:
    """A subset of a prepared data set: in memory, or read `chunk` rows at a time."""
    rows = np.asarray(rows, np.int64)
    m = prepared.manifest
    shape = (int(m["channels"]), int(m["size"]), int(m["size"]))
    if not chunk:
        return TrainingImages(to_model_range(gather(prepared.images, rows)))
    return TrainingImages(read=lambda lo, hi: to_model_range(gather(prepared.images, rows[lo:hi])),
                          count=len(rows), shape=shape, chunk=chunk)


def patch_schedule(cfg: BaselineConfig) -> PatchSchedule:
    return PatchSchedule.from_pairs(cfg.schedule) if cfg.schedule else \
        PatchSchedule.constant(cfg.patch)


def build(cfg: BaselineConfig, images: TrainingImages, statistics: dict | None = None
          ) -> AnalyticDenoiser:
    """The denoiser `cfg` describes, from training images (or stored Wiener statistics)."""
    if cfg.kind == "ideal":
        return IdealDenoiser(images).eval()
    if cfg.kind == "wiener":
        cls = StationaryWiener if cfg.stationary else WienerDenoiser
        if statistics is not None:
            return cls(**statistics, shape=images.shape).eval()
        return cls.from_images(images).eval()
    return LocalScoreDenoiser(images, patch_schedule(cfg), cfg.kind == "els",
                              cfg.boundary).eval()


def label(cfg: BaselineConfig) -> str:
    """The `arch` of a baseline run: ideal, wiener[-stationary], ls/els-p5 or -calibrated."""
    if cfg.kind == "wiener":
        return "wiener-stationary" if cfg.stationary else "wiener"
    if cfg.kind == "ideal":
        return "ideal"
    text = f"{cfg.kind}-" + ("calibrated" if cfg.schedule else f"p{cfg.patch}")
    return text + ("-periodic" if cfg.boundary == "periodic" else "")


@dataclass
class BaselineRun(PreparedImages):
    """An analytic denoiser as a Run (protocol: probe.runs.Run)."""

    directory: Path
    info: dict
    config: BaselineConfig
    prepared: Prepared
    denoiser: AnalyticDenoiser
    checkpoint_sha256: str
    value_range: tuple[float, float] = VALUE_RANGE
    windows: tuple[str, ...] = ()
    objective: str = "analytic"
    training: None = None

    @property
    def run_id(self) -> str:
        return self.directory.name

    @property
    def arch(self) -> str:
        return label(self.config)

    @property
    def n(self) -> int:
        return int(self.info["n"])

    @property
    def split(self) -> str:
        return str(self.info.get("split", ""))

    @property
    def dataset(self) -> str:
        return str(self.prepared.manifest["source"])

    @cached_property
    def train_indices(self) -> np.ndarray:
        doc = artifacts.read_json(self.directory / artifacts.RUN_SUBSET)
        return np.asarray(doc["indices"], np.int64)

    @cached_property
    def test_indices(self) -> np.ndarray:
        return np.asarray(read_subsets(self.prepared)["test"], np.int64)

    def provenance(self) -> dict:
        return {"run_id": self.run_id, "arch": self.arch, "n": self.n, "split": self.split,
                "dataset": self.dataset, "objective": self.objective,
                "checkpoint": str(self.directory / artifacts.RUN_CONFIG),
                "checkpoint_sha256": self.checkpoint_sha256,
                "data_sha256": self.data_sha256,
                "subset_sha256": self.info.get("subset_sha256", ""), "format": "baseline",
                "source_run": self.info.get("source_run", "")}


def _identity(info: dict, statistics_sha: str) -> str:
    return artifacts.sha256_json({"baseline": info["baseline"], "data": info["data_sha256"],
                                  "subset": info["subset_sha256"], "statistics": statistics_sha})


def run_id(cfg: BaselineConfig, dataset_key: str, n: int, split: str, source: str = "") -> str:
    tag = artifacts.sha256_json(to_dict(cfg))[:8]
    base = source or f"{dataset_key}-n{n}{split}"
    return f"{label(cfg)}-{base}-{tag}"


def write_baseline_run(store, cfg: BaselineConfig, prepared: Prepared, rows: np.ndarray,
                       n: int, split: str, source_run: str = "", command: str = "") -> Path:
    """Build the baseline on `rows` of `prepared` and write its run directory."""
    m = prepared.manifest
    shape = (int(m["channels"]), int(m["size"]), int(m["size"]))
    validate(cfg, shape)
    check_memory(cfg.kind, len(rows), shape, cfg.chunk)
    directory = store.run_dir(run_id(cfg, prepared.directory.name, n, split, source_run))
    indices = [int(r) for r in rows]
    info = {"baseline": to_dict(cfg), "run_id": directory.name, "n": n, "split": split,
            "data_dir": str(prepared.directory), "data_sha256": prepared.sha256,
            "subset_sha256": artifacts.sha256_json(indices), "source_run": source_run,
            "command": command}
    stats_sha = ""
    if cfg.kind == "wiener":
        denoiser = build(cfg, training_images(prepared, rows, cfg.chunk))
        stats = {k: v.contiguous() for k, v in denoiser.statistics().items()}
        with artifacts.atomic_path(directory / STATISTICS) as tmp:
            save_file(stats, str(tmp))
        stats_sha = artifacts.sha256_file(directory / STATISTICS)
    info["statistics_sha256"] = stats_sha
    artifacts.write_json(directory / artifacts.RUN_SUBSET,
                         {"dataset": m["source"], "data_sha256": prepared.sha256,
                          "split": split, "n": n, "indices": indices})
    artifacts.write_json(directory / artifacts.RUN_CONFIG, info)  # last: marks it complete
    return directory


def load_baseline_run(directory: Path, info: dict) -> BaselineRun:
    """The Run of a directory `write_baseline_run` wrote."""
    cfg = from_dict(BaselineConfig, info["baseline"])
    prepared = load_prepared(Path(info["data_dir"]))
    if prepared is None:
        raise ProbeError(f"the data of {directory.name} is gone: {info['data_dir']} "
                         "(rerun `probe data prepare` with the run's data options)")
    if prepared.sha256 != info["data_sha256"]:
        raise ProbeError(f"the data under {info['data_dir']} changed since {directory.name} "
                         "was built: rebuild it with `probe baseline`")
    rows = np.asarray(artifacts.read_json(directory / artifacts.RUN_SUBSET)["indices"], np.int64)
    m = prepared.manifest
    shape = (int(m["channels"]), int(m["size"]), int(m["size"]))
    validate(cfg, shape)
    statistics = None
    if cfg.kind == "wiener":
        statistics = load_file(str(directory / STATISTICS))
        images = TrainingImages(torch.zeros(0, *shape))
    else:
        check_memory(cfg.kind, len(rows), shape, cfg.chunk)
        images = training_images(prepared, rows, cfg.chunk)
    denoiser = build(cfg, images, statistics)
    return BaselineRun(directory, info, cfg, prepared, denoiser,
                       _identity(info, info.get("statistics_sha256", "")))
