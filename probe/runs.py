"""The one interface every probe sees a model through: the `Run` protocol.

A run trained here (`TrainedRun`), an outside model of any format (`--model PATH`:
probe.external reads the files, probe.external_runs makes the Run), and an analytic denoiser are
all Runs: a probe reads only the members below and never asks which kind it holds.

- `denoiser`: D(x_noisy, sigma) -> x0_hat on images in `value_range` ([-1, 1]), eval mode;
- `image_shape` (C, H, W) of what it denoises;
- `images(rows)`: data-set rows as float [N, C, H, W] in `value_range`, and the rows of its
  training subset and of the held-out set (`train_indices`, `test_indices`; either may be
  empty: a model trained elsewhere has no training subset here);
- what pairs and tables need to tell runs apart: `run_id` (unique under the artifacts root),
  `arch`, `n` (None when unknown), `split` ("" when unknown), `dataset`, `objective`,
  `windows`, `data_sha256`, `checkpoint_sha256`, and `provenance()`, the attributes every
  probe output carries;
- `training`: the training history a run kept (`TrainingHistory`: its periodic checkpoints and
  learning rate, for training-image influence), or None;
- optionally `native_range`: the value range the network itself was trained on (default
  [-1, 1]); D maps [-1, 1] onto it, and the Jacobian probe measures linearity about the
  network's own zero (probe.models.native).

`select_runs` is how a probe command chooses runs when none is named: every finished run under
the artifacts root, or with `last=True` those the latest `probe train-split` made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from probe import artifacts, checkpoints
from probe.artifacts import Artifacts
from probe.config import DataConfig, RunConfig, SubsetConfig, run_config_from_dict
from probe.data.loader import gather, to_model_range
from probe.data.prepare import Prepared, load_prepared
from probe.data.subsets import make_subsets, read_subsets
from probe.errors import ProbeError
from probe.models import zoo
from probe.models.denoiser import Denoiser

RUN_FIELDS = ("data", "subsets", "model", "train")
VALUE_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class TrainingHistory:
    """What training-image influence needs: the kept checkpoints (raw weights, oldest first),
    the learning rate used after each, and a fresh denoiser to load them into."""

    checkpoints: tuple[Path, ...]
    lr: float
    config: RunConfig

    def fresh_denoiser(self) -> Denoiser:
        return zoo.build_denoiser(self.config)


@runtime_checkable
class Run(Protocol):
    run_id: str
    arch: str
    n: int | None
    split: str
    dataset: str
    objective: str
    windows: tuple[str, ...]
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    denoiser: torch.nn.Module
    data_sha256: str
    checkpoint_sha256: str
    train_indices: np.ndarray
    test_indices: np.ndarray
    training: TrainingHistory | None

    def images(self, indices: np.ndarray) -> torch.Tensor: ...

    def provenance(self) -> dict: ...


class _PreparedImages:
    """Rows of a prepared data set in the model range: what `images` is for runs on one."""

    prepared: Prepared

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """Rows of the data set as float [N, C, H, W] in [-1, 1]."""
        return to_model_range(gather(self.prepared.images, np.asarray(indices, np.int64)))

    @property
    def data_sha256(self) -> str:
        return self.prepared.sha256

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.prepared.manifest
        return (int(m["channels"]), int(m["size"]), int(m["size"]))


@dataclass
class TrainedRun(_PreparedImages):
    """A run directory written by `probe train-split`."""

    directory: Path
    config: RunConfig
    info: dict  # config.json as written (run id, hashes, command)
    denoiser: Denoiser  # eval mode, on CPU
    weights: Path
    checkpoint_sha256: str
    prepared: Prepared
    value_range: tuple[float, float] = VALUE_RANGE

    @property
    def run_id(self) -> str:
        return self.directory.name

    @property
    def arch(self) -> str:
        return self.config.model.arch

    @property
    def n(self) -> int:
        return self.config.train.n

    @property
    def split(self) -> str:
        return self.config.train.split

    @property
    def dataset(self) -> str:
        return self.config.data.dataset

    @property
    def objective(self) -> str:
        return self.config.train.objective

    @property
    def windows(self) -> tuple[str, ...]:
        return tuple(self.config.model.windows)

    @cached_property
    def subset(self) -> dict:
        return artifacts.read_json(self.directory / artifacts.RUN_SUBSET)

    @property
    def train_indices(self) -> np.ndarray:
        return np.asarray(self.subset["indices"], np.int64)

    @cached_property
    def test_indices(self) -> np.ndarray:
        return np.asarray(read_subsets(self.prepared)["test"], np.int64)

    @cached_property
    def training(self) -> TrainingHistory:
        kept = checkpoints.checkpoints(self.directory)
        # AdamW at a constant lr: the lr after every checkpoint is the configured one
        return TrainingHistory(tuple(p / artifacts.MODEL_WEIGHTS for p in kept),
                               self.config.train.lr, self.config)

    def provenance(self) -> dict:
        """Attributes every probe output carries: which checkpoint and data made it."""
        return {"run_id": self.run_id, "arch": self.arch, "n": self.n, "split": self.split,
                "dataset": self.dataset, "objective": self.objective,
                "checkpoint": str(self.weights), "checkpoint_sha256": self.checkpoint_sha256,
                "data_sha256": self.info.get("data_sha256", ""),
                "subset_sha256": self.info.get("subset_sha256", ""), "format": "probe-run"}


@dataclass
class ExternalRun(_PreparedImages):
    """A model trained elsewhere, probed on a data set prepared here: it has no training
    subset (N unknown), so metrics that need training images are not computed for it."""

    run_id: str
    arch: str
    denoiser: torch.nn.Module
    weights: Path
    checkpoint_sha256: str
    prepared: Prepared
    test_indices: np.ndarray
    objective: str = "ddpm"
    format: str = ""
    train_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n: int | None = None
    split: str = ""
    windows: tuple[str, ...] = ()
    training: TrainingHistory | None = None
    value_range: tuple[float, float] = VALUE_RANGE

    @property
    def dataset(self) -> str:
        return str(self.prepared.manifest["source"])

    def provenance(self) -> dict:
        return {"run_id": self.run_id, "arch": self.arch, "n": self.n, "split": self.split,
                "dataset": self.dataset, "objective": self.objective,
                "checkpoint": str(self.weights), "checkpoint_sha256": self.checkpoint_sha256,
                "data_sha256": self.prepared.sha256, "subset_sha256": "",
                "format": self.format}


# ------------------------------------------------------------------------------- loading


def find_run_dir(run: str | Path, store: Artifacts) -> Path:
    """A run given as a path, or as a run id under the artifacts root."""
    path = Path(run)
    if not path.exists() and path.name == str(run) and store.run_dir(str(run)).exists():
        path = store.run_dir(str(run))
    if not path.is_dir():
        raise ProbeError(f"run not found: {run}")
    if path.name in ("", ".", ".."):  # "runs/x/..": the directory it names, not a run ".."
        path = path.resolve()
    if not (path / artifacts.RUN_CONFIG).is_file():
        raise ProbeError(f"{path} is not a run directory (no {artifacts.RUN_CONFIG})")
    return path


def load_run(run: str | Path, store: Artifacts, weights: str = "ema") -> TrainedRun:
    """Load a run's denoiser (EMA weights by default) in eval mode."""
    directory = find_run_dir(run, store)
    where = directory / artifacts.RUN_CONFIG
    info = artifacts.read_json(where)
    config = run_config_from_dict(info, str(where))  # once, for every probe: types, ranges
    if not isinstance(info.get("data_dir"), str) or not info["data_dir"]:
        raise ProbeError(f"{where}: data_dir must name the run's data folder, got "
                         f"{info.get('data_dir')!r}")
    path = directory / f"{weights}.safetensors"
    if not path.is_file():
        raise ProbeError(f"{directory} has no {path.name}: the run has not finished training")
    denoiser = zoo.build_denoiser(config)
    checkpoints.load_weights(path, denoiser.backbone)
    denoiser.eval().requires_grad_(False)
    prepared = load_prepared(Path(info["data_dir"]))
    if prepared is None:
        raise ProbeError(f"the data of {directory.name} is gone: {info['data_dir']} "
                         "(rerun `probe data prepare` with the run's data options)")
    return TrainedRun(directory, config, info, denoiser, path, artifacts.sha256_file(path),
                      prepared)


def held_out_rows(prepared: Prepared) -> np.ndarray:
    """The data set's held-out rows: from its subsets.json, or the same choice computed in
    memory when no subsets were written yet."""
    try:
        test = read_subsets(prepared)["test"]
    except ProbeError:
        test = make_subsets(prepared.partition, SubsetConfig(ns=(1,)),
                            prepared.manifest["source"], prepared.sha256)["test"]
    return np.asarray(test, np.int64)


def load_diffusers_run(path: str | Path, data_config: DataConfig, store: Artifacts,
                       command: str = ""):
    """A local diffusers folder as a Run on `data_config`'s data set: the scheduler config saved
    with it gives the schedule and prediction type (probe.external_runs.load_model_run)."""
    from probe.external_runs import load_model_run

    return load_model_run(str(path), data_config, store, command)


# ---------------------------------------------------------------------- choosing the runs


def finished_runs(store: Artifacts) -> list[Path]:
    """Every finished run directory under the artifacts root (its EMA weights written last)."""
    if not store.runs_dir.is_dir():
        return []
    return sorted(p for p in store.runs_dir.iterdir()
                  if (p / artifacts.RUN_CONFIG).is_file() and (p / artifacts.EMA_WEIGHTS).is_file())


def record_last(store: Artifacts, run_dirs: list[Path]) -> Path:
    """Remember the runs one `probe train-split` made (what `--last` selects)."""
    return artifacts.write_json(store.root / artifacts.LAST_RUNS,
                                {"runs": [Path(d).name for d in run_dirs]})


def select_runs(store: Artifacts, last: bool = False) -> list[Path]:
    """The runs a probe command takes when none is named; a one-line error when there are
    none."""
    if last:
        path = store.root / artifacts.LAST_RUNS
        names = artifacts.read_json(path)["runs"] if path.is_file() else []
        done = {p.name: p for p in finished_runs(store)}
        chosen = [done[name] for name in names if name in done]
    else:
        chosen = finished_runs(store)
    if not chosen:
        which = "made by the latest train-split" if last else "finished"
        raise ProbeError(f"no {which} runs under {store.runs_dir}: train one with `probe "
                         "train-split --n 10 ...`, or name RUN directories or --model PATH")
    return chosen
