"""`probe compare RUN --to ideal,wiener,els`: a trained model held against analytic denoisers
of its own training subset (probe.baselines), or against other runs of the same data.

Per run, into probes/<run-id>/compare.h5 (layout: probe.formats.compare):

- one-step agreement: r^2 and cosine (probe.metrics.agreement) of D_theory(x, s) against
  D_model(x, s) per sigma, on fixed noisy images of the training subset and the held-out set
  (the same images and noise every probe uses, probe.probes.common / probe.seeding);
- calibration (ls/els with `patch = 0`): the patch per sigma that best matches the model
  (probe.probes.calibration), used for both measurements;
- trajectory agreement (Kamb & Ganguli's Table 1): model and theory sample from the same
  initial noise (and the same injected noise) with the model's sampler on the model's noise
  levels; r^2 of the final samples per seed, and of the two denoised estimates at every step.

Theories are rebuilt from the run's subset on every call (cheap next to sampling: the Wiener
SVD of 1,000 16x16 digits takes 0.1 s), so a finished file resumes group by group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe import artifacts
from probe.artifacts import Artifacts
from probe.baselines.base import TrainingImages
from probe.baselines.local import PatchSchedule, check_patch
from probe.baselines.run import build, check_memory
from probe.config import BOUNDARIES, COMPARE_THEORIES, BaselineConfig, CompareConfig, to_dict
from probe.data.loader import to_uint8
from probe.diffusion.samplers import resolve_sampler, sample_from_seeds, sampler_sigmas
from probe.errors import ProbeError
from probe.formats import compare as fmt
from probe.formats.h5 import ResumableH5
from probe.metrics import memorization as mem
from probe.metrics.agreement import cosine, r2
from probe.metrics.compare import table_from_file
from probe.probes.calibration import calibrate, candidate_patches, noisy
from probe.probes.common import check_inputs, probe_indices
from probe.probes.samples import check_sampling, device, sample_seeds
from probe.runs import TrainingRows

TRAINING_METRICS = "the analytic denoisers (built from the run's own training subset)"
NOT_IN_IDENTITY = ("theories", "batch")


def validate(cfg: CompareConfig) -> None:
    check_inputs(cfg.sigmas, "test", cfg.seed)
    check_sampling(cfg.sampler, cfg.steps, cfg.samples, cfg.seed, cfg.batch)
    if not cfg.theories:
        raise ProbeError("--to needs at least one theory (ideal, wiener, ls, els) or run")
    if cfg.images < 1 or cfg.calibration_images < 1:
        raise ProbeError("--images must be at least 1")
    if cfg.patch < 0 or (cfg.patch and cfg.patch % 2 == 0):
        raise ProbeError(f"--patch must be odd (0: calibrated per sigma), got {cfg.patch}")
    if cfg.boundary not in BOUNDARIES:
        raise ProbeError(f"--boundary must be one of {', '.join(BOUNDARIES)}")


def _label(run) -> str:
    return f"{run.run_id} ({run.dataset} {run.image_shape[-1]}px)"


def check_same_data(run, other) -> None:
    if run.data_sha256 != other.data_sha256 or tuple(run.image_shape) != \
            tuple(other.image_shape):
        raise ProbeError(f"cannot compare runs of different data: {_label(run)} and "
                         f"{_label(other)}")


def training_set(run, chunk: int) -> TrainingImages:
    rows = run.train_indices
    if not chunk:
        return TrainingImages(run.images(rows))
    return TrainingImages(read=lambda lo, hi: run.images(rows[lo:hi]), count=len(rows),
                          shape=tuple(run.image_shape), chunk=chunk)


@dataclass
class Plan:
    theories: list  # (key, theory name or loaded Run)


def _load_reference(ref: str):
    from probe.runs import (  # runs sit below probes; imported here to keep start-up light
        load_run,
    )

    path = Path(ref)
    return load_run(path, Artifacts.at(path.parent.parent))


def plan(runs, cfg: CompareConfig, log) -> list[Plan]:
    loaded = {ref: _load_reference(ref) for ref in cfg.theories if ref not in COMPARE_THEORIES}
    plans = []
    for run in runs:
        theories = []
        for ref in cfg.theories:
            if ref in COMPARE_THEORIES:
                if ref in ("ls", "els"):
                    if cfg.patch:
                        check_patch(cfg.patch, run.image_shape)
                    else:
                        candidate_patches(cfg.patches, run.image_shape)
                check_memory(ref, len(run.train_indices), tuple(run.image_shape), cfg.chunk)
                theories.append((ref, ref))
            else:
                other = loaded[ref]
                check_same_data(run, other)
                if other.run_id == run.run_id:
                    raise ProbeError(f"--to names the run being compared: {run.run_id}")
                theories.append((other.run_id, other))
        plans.append(Plan(theories))
    return plans


# --------------------------------------------------------------------------------- probing


class _Session:
    def __init__(self, run, cfg: CompareConfig, out: ResumableH5, log):
        self.run, self.cfg, self.out, self.log = run, cfg, out, log
        self.dev = device()
        self.model = run.denoiser.to(self.dev)
        self.images = training_set(run, cfg.chunk)

    def theory(self, key: str, ref):
        """The theory's denoiser (ls/els calibrated here first when no patch is given)."""
        if not isinstance(ref, str):
            return ref.denoiser.to(self.dev)
        c = self.cfg
        base = BaselineConfig(kind=ref, patch=max(c.patch, 1), boundary=c.boundary,
                              stationary=c.stationary, chunk=c.chunk)
        if ref in ("ls", "els") and not c.patch:
            schedule = self._schedule(ref)
            base = dataclasses.replace(base, schedule=tuple(zip(schedule.sigmas,
                                                                schedule.patches)))
        return build(base, self.images).to(self.dev)

    def _schedule(self, kind: str) -> PatchSchedule:
        out, c, key = self.out, self.cfg, fmt.key(fmt.CALIBRATION, kind)
        if out.done(key):
            g = out.file[key]
            return PatchSchedule.from_pairs(zip(g["sigmas"][:], g["best"][:]))
        rows = probe_indices(self.run, c.calibration_images, "train", c.seed)
        self.log(f"{self.run.run_id}: calibrating the {kind} patch on {len(rows)} noisy "
                 f"training images x {len(c.sigmas)} sigmas")
        schedule, table = calibrate(self.model, self.images, self.run.images(rows).to(self.dev),
                                    rows, c.sigmas, c.patches, kind == "els", c.boundary,
                                    c.seed, self.log)
        g = out.begin(key)
        g.create_dataset("sigmas", data=np.asarray(c.sigmas, np.float64))
        g.create_dataset("patches", data=np.asarray(candidate_patches(c.patches,
                                                                      self.run.image_shape)))
        g.create_dataset("r2", data=table)
        g.create_dataset("best", data=np.asarray(schedule.patches, np.int64))
        out.complete(g)
        return schedule


@torch.no_grad()
def _batched(denoiser, x: torch.Tensor, sigma: float, batch: int) -> torch.Tensor:
    return torch.cat([denoiser(x[lo: lo + batch], sigma) for lo in range(0, len(x), batch)])


def _onestep(s: _Session, key: str, theory) -> None:
    c, run = s.cfg, s.run
    group = s.out.begin(fmt.key(fmt.ONESTEP, key))
    r2s = [[None] * len(c.sigmas) for _ in fmt.SOURCES]
    cos = [[None] * len(c.sigmas) for _ in fmt.SOURCES]
    rows_all = []
    s.log(f"{run.run_id}: one-step agreement with {key} on {c.images} train and test images "
          f"x {len(c.sigmas)} sigmas")
    for gi, source in enumerate(fmt.SOURCES):
        rows = probe_indices(run, c.images, source, c.seed)
        rows_all.append(rows)
        x0 = run.images(rows).to(s.dev)
        for si, sigma in enumerate(c.sigmas):
            x = noisy(x0, rows, float(sigma), si, c.seed)
            a = _batched(s.model, x, float(sigma), c.batch)
            b = _batched(theory, x, float(sigma), c.batch)
            r2s[gi][si], cos[gi][si] = r2(a, b), cosine(a, b)
    width = min(len(r) for r in rows_all)  # a small held-out set may offer fewer images
    group.create_dataset("r2", data=np.asarray([[v[:width] for v in g] for g in r2s]))
    group.create_dataset("cosine", data=np.asarray([[v[:width] for v in g] for g in cos]))
    group.create_dataset("rows", data=np.asarray([r[:width] for r in rows_all]))
    group.create_dataset("sigmas", data=np.asarray(c.sigmas, np.float64))
    schedule = getattr(theory, "schedule", None)
    group.create_dataset("patches", data=np.asarray(
        [schedule(v) if schedule else 0 for v in c.sigmas], np.int64))
    s.out.complete(group)


@torch.no_grad()
def _trajectory(denoiser, seeds, name: str, sigmas, batch: int, dev):
    """(final samples [n, C, H, W], denoised estimate at every step [T, n, C, H, W])."""
    finals, steps = [], []
    for lo in range(0, len(seeds), batch):
        record: list[torch.Tensor] = []

        def keep(i, sigma, x, denoised, record=record):
            record.append(denoised.float().cpu())

        out = sample_from_seeds(denoiser, seeds[lo: lo + batch], name, len(sigmas) - 1,
                                callback=keep, sigmas=sigmas, device=dev)
        finals.append(out.float().cpu())
        steps.append(torch.stack(record))
    t = min(len(st) for st in steps)  # kadkhodaie: the ascent's length varies
    return torch.cat(finals), torch.cat([st[:t] for st in steps], 1)


def _model_trajectory(s: _Session):
    c, key = s.cfg, fmt.key(fmt.TRAJECTORY, fmt.MODEL)
    name = resolve_sampler(c.sampler, s.model)
    sigmas = sampler_sigmas(name, s.model, c.steps)
    seeds = sample_seeds(c.seed, c.samples)
    if not s.out.done(key):
        s.log(f"{s.run.run_id}: sampling {c.samples} model trajectories ({name})")
        samples, steps = _trajectory(s.model, seeds, name, sigmas, c.batch, s.dev)
        idx, _ = mem.nearest_neighbours(samples, TrainingRows(s.run), 1, "l2")
        rows = s.run.train_indices[idx[:, 0].numpy()]
        g = s.out.begin(key)
        g.create_dataset("samples", data=samples.numpy())
        g.create_dataset("step_denoised", data=steps.numpy().astype(np.float16))
        g.create_dataset("seeds", data=np.asarray(seeds, np.int64))
        g.create_dataset("nearest", data=to_uint8(s.run.images(rows)))
        g.create_dataset("nearest_rows", data=rows)
        g.create_dataset("step_sigmas", data=sigmas.numpy()[: steps.shape[0]])
        g.attrs["sampler"], g.attrs["steps"] = name, c.steps
        s.out.complete(g)
    g = s.out.file[key]
    return (name, sigmas, seeds, torch.from_numpy(g["samples"][:]),
            torch.from_numpy(g["step_denoised"][:].astype(np.float32)))


def _theory_trajectory(s: _Session, key: str, theory, model) -> None:
    name, sigmas, seeds, samples, steps = model
    s.log(f"{s.run.run_id}: {len(seeds)} {key} trajectories from the same noise ({name})")
    mine, my_steps = _trajectory(theory, seeds, name, sigmas, s.cfg.batch, s.dev)
    t = min(len(my_steps), len(steps))
    g = s.out.begin(fmt.key(fmt.TRAJECTORY, key))
    g.create_dataset("samples", data=mine.numpy())
    g.create_dataset("r2", data=r2(samples, mine))
    g.create_dataset("cosine", data=cosine(samples, mine))
    g.create_dataset("step_r2", data=np.stack([r2(steps[i], my_steps[i]) for i in range(t)]))
    s.out.complete(g)


def probe_run(run, p: Plan, cfg: CompareConfig, path: Path, command: str, log) -> Path:
    attrs = {**run.provenance(), "command": command, "config": to_dict(cfg),
             "theories": [k for k, _ in p.theories]}
    core = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_IDENTITY}
    identity = {"checkpoint_sha256": run.checkpoint_sha256, "data_sha256": run.data_sha256,
                "layout": fmt.LAYOUT, **core}
    with ResumableH5(path, attrs, identity, reopen=True) as out:
        s = _Session(run, cfg, out, log)
        model = _model_trajectory(s)
        for key, ref in p.theories:
            todo = [g for g in (fmt.ONESTEP, fmt.TRAJECTORY) if not out.done(fmt.key(g, key))]
            if not todo:
                continue
            theory = s.theory(key, ref)
            if fmt.ONESTEP in todo:
                _onestep(s, key, theory)
            if fmt.TRAJECTORY in todo:
                _theory_trajectory(s, key, theory, model)
        out.file.attrs["theories"] = sorted(
            k for k in out.file[fmt.ONESTEP]) if fmt.ONESTEP in out.file else []
    return path


class Compare:
    """The compare probe (protocol: probe.probes.protocol)."""

    name = "compare"
    filename = artifacts.COMPARE_H5
    table = artifacts.COMPARE_TABLE

    def validate(self, cfg: CompareConfig) -> None:
        validate(cfg)

    def training_images(self, cfg: CompareConfig) -> str:
        return TRAINING_METRICS if set(cfg.theories) & set(COMPARE_THEORIES) else ""

    def plan(self, runs, cfg: CompareConfig, paths, log) -> list[Plan]:
        return plan(runs, cfg, log)

    def probe(self, run, plan: Plan, cfg: CompareConfig, path: Path, command: str,
              log) -> None:
        probe_run(run, plan, cfg, path, command, log)

    def tidy(self, runs, paths, cfg: CompareConfig) -> pd.DataFrame:
        return pd.concat([table_from_file(p) for p in paths], ignore_index=True)


PROBE = Compare()

