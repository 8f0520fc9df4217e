"""An outside model (probe.external) probed on a data set prepared here: a Run.

Which images a published model is probed on is the user's choice, through the data options every
probe command has (`--dataset`, `--root`, `--size`, ...). A single image or a handful (the 64x64
crop of `camera()` Mohan et al.'s checks use) is a `folder` data set: `--dataset folder --root
DIR --size 64 --crop none`. Reusing the data options, rather than a new `--images-from FILE`,
keeps one cached, hashed array per image set, so two models probed on the same folder see the
same rows and the same seeded noise (probe.seeding), and the data hash lands in provenance.

The rows probed ("held out" for the model): the data set's own test partition when it has one
(what this tool's runs are probed on, so an outside model and a trained run are compared on the
same images); for a set too small for that, every row.

Training images (`--train-data`), which the PSNR gap, nearest training images and TracInCP need,
are only known when the user says so, and are never invented:

- `--train-data DIR`: a folder of the model's training images, prepared at the probe data's
  size, channels and crop; they become rows after the probe data set's rows;
- `--train-data START:STOP`: those rows of the probe data set itself (e.g. a model trained on
  the first 1000 images of a set), which are then no longer held out.

Without it `train_indices` is empty and the driver refuses, in one line, the metrics that need
it. TracInCP also needs the training checkpoints, which no outside format carries.

Value ranges: `images(rows)` are on [-1, 1] like every Run's, and `denoiser` is the model behind
D on [-1, 1] (probe.models.native); `native_range` is the model's own range, where its zero lies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from probe import artifacts
from probe.artifacts import Artifacts
from probe.config import DataConfig
from probe.data.loader import gather, to_model_range
from probe.data.prepare import Prepared, prepare
from probe.errors import ProbeError
from probe.external import LoadedModel, ModelSpec, detect, load_model
from probe.runs import VALUE_RANGE, TrainingHistory, held_out_rows, load_run


@dataclass
class OutsideRun:
    """A Run around a LoadedModel and one or two prepared data sets (probe data, training)."""

    run_id: str
    model: LoadedModel
    prepared: Prepared
    test_indices: np.ndarray
    train_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    train_prepared: Prepared | None = None  # --train-data DIR: its rows follow the probe data's
    train_data: str = ""
    n: int | None = None
    split: str = ""
    windows: tuple[str, ...] = ()
    training: TrainingHistory | None = None
    value_range: tuple[float, float] = VALUE_RANGE

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.model.denoiser

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def objective(self) -> str:
        return self.model.objective

    @property
    def native_range(self) -> tuple[float, float]:
        return self.model.native_range

    @property
    def checkpoint_sha256(self) -> str:
        return self.model.sha256

    @property
    def dataset(self) -> str:
        return str(self.prepared.manifest["source"])

    @property
    def data_sha256(self) -> str:
        if self.train_prepared is None:
            return self.prepared.sha256
        return artifacts.sha256_json([self.prepared.sha256, self.train_prepared.sha256])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.prepared.manifest
        return (int(m["channels"]), int(m["size"]), int(m["size"]))

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """Rows as float [N, C, H, W] in [-1, 1]; rows past the probe data set's are the
        --train-data folder's."""
        rows = np.asarray(indices, np.int64)
        count = int(self.prepared.manifest["count"])
        if self.train_prepared is None or (rows < count).all():
            return to_model_range(gather(self.prepared.images, rows))
        out = torch.empty((len(rows), *self.image_shape))
        own = rows < count
        if own.any():
            out[torch.from_numpy(own)] = to_model_range(gather(self.prepared.images, rows[own]))
        out[torch.from_numpy(~own)] = to_model_range(
            gather(self.train_prepared.images, rows[~own] - count))
        return out

    def provenance(self) -> dict:
        return {"run_id": self.run_id, "arch": self.arch, "n": self.n, "split": self.split,
                "dataset": self.dataset, "objective": self.objective,
                "checkpoint": str(self.model.weights), "checkpoint_sha256": self.model.sha256,
                "data_sha256": self.data_sha256, "subset_sha256": "",
                "format": self.model.format, "native_range": list(self.native_range),
                "train_data": self.train_data, **self.model.details}


def probe_rows(prepared: Prepared) -> np.ndarray:
    """The data set's test partition, or every row of a set too small to have one."""
    try:
        return held_out_rows(prepared)
    except ProbeError:
        return np.arange(int(prepared.manifest["count"]), dtype=np.int64)


def _fit_data(model: LoadedModel, data_config: DataConfig, name: str) -> DataConfig:
    """The data set at the model's channels (when not given); refuse a size it cannot take."""
    if data_config.channels is None:
        data_config = replace(data_config, channels=model.channels)
    if data_config.channels != model.channels:
        raise ProbeError(f"{name} takes {model.channels}-channel images, not "
                         f"{data_config.channels} (set --channels {model.channels})")
    if model.image_size is not None and data_config.size != model.image_size:
        raise ProbeError(f"{name} takes {model.image_size}px images, not {data_config.size}px "
                         "(set --size)")
    return data_config


def _train_rows(train_data: str, prepared: Prepared, data_config: DataConfig, store: Artifacts,
                command: str) -> tuple[np.ndarray, Prepared | None]:
    count = int(prepared.manifest["count"])
    match = re.fullmatch(r"(\d*):(\d*)", train_data.strip())
    if match:
        start = int(match[1] or 0)
        stop = int(match[2]) if match[2] else count
        if not 0 <= start < stop <= count:
            raise ProbeError(f"--train-data {train_data}: rows out of range for "
                             f"{prepared.manifest['source']} ({count} images)")
        return np.arange(start, stop, dtype=np.int64), None
    folder = Path(train_data)
    if not folder.is_dir():
        raise ProbeError(f"--train-data {train_data}: neither a folder of images nor rows "
                         "START:STOP of the probe data set")
    train_cfg = replace(data_config, dataset="folder", root=str(folder), dedup=None,
                        classes=())
    train = prepare(train_cfg, store, command)
    return count + np.arange(int(train.manifest["count"]), dtype=np.int64), train


def load_model_run(spec: ModelSpec | str, data_config: DataConfig | None, store: Artifacts,
                   command: str = "", train_data: str | None = None):
    """The model `spec` names as a Run: this tool's run directory as itself (TrainedRun), any
    other format as an OutsideRun on `data_config`'s data set."""
    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    if detect(spec.path) == "probe-run":
        if train_data:
            raise ProbeError(f"--train-data is for outside models; {spec.path} knows its own")
        return load_run(spec.path, store)
    if data_config is None:
        raise ProbeError("--model needs a data set to probe it on (--dataset, --size, ...)")
    model = load_model(spec)
    name = Path(str(spec.path).split(":")[0]).name
    data_config = _fit_data(model, data_config, name)
    prepared = prepare(data_config, store, command)
    if getattr(model.denoiser, "image_size", 0) is None:  # a convolutional model: samplers
        model.denoiser.image_size = int(prepared.manifest["size"])  # draw the data's size
    test = probe_rows(prepared)
    train, train_prepared = np.zeros(0, np.int64), None
    if train_data:
        train, train_prepared = _train_rows(train_data, prepared, data_config, store, command)
        test = np.setdiff1d(test, train) if train_prepared is None else test
        if len(test) == 0:
            raise ProbeError(f"--train-data {train_data} leaves no held-out rows to probe")
    where = Path(str(spec.path).split(":")[0].rstrip("/")).resolve()
    stem = where.stem if where.is_file() else where.name
    run_id = f"{re.sub(r'[^A-Za-z0-9._-]+', '-', stem)}-{model.sha256[:8]}"
    return OutsideRun(run_id, model, prepared, test, train, train_prepared, train_data or "",
                      n=len(train) if len(train) else None)
