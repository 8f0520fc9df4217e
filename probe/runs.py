"""Reading a finished run back: its config, its denoiser, its data and its subsets.

Every probe starts here, so every probe names the same checkpoint hash and data manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from probe import artifacts, checkpoints
from probe.artifacts import Artifacts
from probe.config import RunConfig, from_dict
from probe.data.loader import gather, to_model_range
from probe.data.prepare import Prepared, load_prepared
from probe.data.subsets import read_subsets
from probe.errors import ProbeError
from probe.models.denoiser import Denoiser
from probe.train import CONFIG, SUBSET, build_denoiser

RUN_FIELDS = ("data", "subsets", "model", "train")


@dataclass
class Run:
    directory: Path
    config: RunConfig
    info: dict  # config.json as written (run id, hashes, command)
    denoiser: Denoiser  # eval mode, on CPU
    weights: Path
    checkpoint_sha256: str
    prepared: Prepared

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

    @cached_property
    def subset(self) -> dict:
        return artifacts.read_json(self.directory / SUBSET)

    @property
    def train_indices(self) -> np.ndarray:
        return np.asarray(self.subset["indices"], np.int64)

    @cached_property
    def test_indices(self) -> np.ndarray:
        return np.asarray(read_subsets(self.prepared)["test"], np.int64)

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """Rows of the run's data set as float [N, C, H, W] in [-1, 1]."""
        return to_model_range(gather(self.prepared.images, np.asarray(indices, np.int64)))

    def provenance(self) -> dict:
        """Attributes every probe output carries: which checkpoint and data made it."""
        return {"run_id": self.run_id, "arch": self.arch, "n": self.n, "split": self.split,
                "checkpoint": str(self.weights), "checkpoint_sha256": self.checkpoint_sha256,
                "data_sha256": self.info.get("data_sha256", ""),
                "subset_sha256": self.info.get("subset_sha256", "")}


def find_run_dir(run: str | Path, store: Artifacts) -> Path:
    """A run given as a path, or as a run id under the artifacts root."""
    path = Path(run)
    if not path.exists() and (store.run_dir(str(run))).exists():
        path = store.run_dir(str(run))
    if not path.is_dir():
        raise ProbeError(f"run not found: {run}")
    if not (path / CONFIG).is_file():
        raise ProbeError(f"{path} is not a run directory (no {CONFIG})")
    return path


def load_run(run: str | Path, store: Artifacts, weights: str = "ema") -> Run:
    """Load a run's denoiser (EMA weights by default) in eval mode."""
    directory = find_run_dir(run, store)
    info = artifacts.read_json(directory / CONFIG)
    config = from_dict(RunConfig, {k: info[k] for k in RUN_FIELDS if k in info})
    path = directory / f"{weights}.safetensors"
    if not path.is_file():
        raise ProbeError(f"{directory} has no {path.name}: the run has not finished training")
    denoiser = build_denoiser(config)
    checkpoints.load_weights(path, denoiser.backbone)
    denoiser.eval().requires_grad_(False)
    prepared = load_prepared(Path(info["data_dir"]))
    if prepared is None:
        raise ProbeError(f"the data of {directory.name} is gone: {info['data_dir']} "
                         "(rerun `probe data prepare` with the run's data options)")
    return Run(directory, config, info, denoiser, path, artifacts.sha256_file(path), prepared)
