"""`probe generalization`: did a run generalize or memorize?

Per run, into probes/<run-id>/generalization.h5 (layout: probe.formats.generalization): PSNR
on fixed training and held-out images (An et al.'s PSNR gap), samples from the noise of
(seed, i), each sample's nearest training images, FID/KID/precision/recall when a feature
extractor is given, and the same-noise cosine against each partner run (Kadkhodaie et al.'s
reproducibility). The tidy table is built from the file (probe.metrics.generalization).

Pairs: runs given together that differ only in their split (same data, N, model and objective;
one a, one b) are paired by themselves; --pair adds others (same data set and resolution).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from probe import artifacts
from probe.config import GeneralizationConfig, to_dict
from probe.data.loader import to_uint8
from probe.diffusion.samplers import sampler_sigmas
from probe.errors import ProbeError
from probe.formats import generalization as fmt
from probe.formats.h5 import ResumableH5, up_to_date
from probe.formats.samples import read_samples, write_samples
from probe.metrics import fid as fidm
from probe.metrics import fid_digits
from probe.metrics import memorization as mem
from probe.metrics.generalization import table_from_file
from probe.metrics.psnr import denoising_psnr
from probe.probes.common import check_inputs, probe_indices
from probe.probes.samples import check_sampling, device, generate, sample_seeds
from probe.runs import TrainingRows

TRAINING_METRICS = "the PSNR gap (training vs held-out images) and nearest-training-image " \
                   "memorization"


MEAN_CHUNK = 1024  # held-out rows read at once for the data set's mean image


# ---------------------------------------------------------------------------------- inputs


def validate(cfg: GeneralizationConfig) -> None:
    check_inputs(cfg.sigmas, "test", cfg.seed)
    check_sampling(cfg.sampler, cfg.steps, cfg.samples, cfg.seed, cfg.batch)
    if cfg.images < 1:
        raise ProbeError(f"--images must be at least 1, got {cfg.images}")
    if not 0 < cfg.threshold <= 1:
        raise ProbeError(f"--threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.fid_weights is not None:
        if not Path(cfg.fid_weights).is_file():
            raise ProbeError(f"FID weights file not found: {cfg.fid_weights}")
        if cfg.samples <= fidm.PR_K:
            raise ProbeError(f"--samples must exceed {fidm.PR_K} for precision/recall")


def _data_label(run) -> str:
    c, h, w = run.image_shape
    return f"{run.dataset} {h}px"


def check_pair(a, b) -> None:
    """Two runs can be compared sample by sample only on the same images at the same size."""
    if a.run_id == b.run_id:
        raise ProbeError(f"--pair needs two different runs, got {a.run_id} twice")
    if tuple(a.image_shape) != tuple(b.image_shape):
        raise ProbeError(f"cannot pair runs of different resolutions: {a.run_id} "
                         f"({_data_label(a)}) and {b.run_id} ({_data_label(b)})")
    if a.data_sha256 != b.data_sha256:
        raise ProbeError(f"cannot pair runs of different data sets: {a.run_id} "
                         f"({_data_label(a)}) and {b.run_id} ({_data_label(b)})")


def _twin_key(run) -> str:
    """What split-a and split-b twins share: data, N, model and objective."""
    return json.dumps([run.data_sha256, run.n, run.arch, list(run.windows), run.objective,
                       list(run.image_shape)])


def resolve_pairs(runs: list, explicit: list[tuple] = (), log=None) -> list[tuple]:
    """Explicit pairs (checked), plus the a/b twins among `runs` (unambiguous ones only)."""
    pairs = []
    for a, b in explicit:
        check_pair(a, b)
        pairs.append((a, b))
    groups: dict[str, dict[str, list]] = {}
    for run in runs:
        if run.n is not None:  # a model trained elsewhere has no split twin
            groups.setdefault(_twin_key(run), {}).setdefault(run.split, []).append(run)
    for splits in groups.values():
        a, b = splits.get("a", []), splits.get("b", [])
        if len(a) == 1 and len(b) == 1:
            pairs.append((a[0], b[0]))
        elif a and b and log:
            log(f"not pairing {len(a)} split-a and {len(b)} split-b runs of N={a[0].n}: "
                "ambiguous, use --pair")
    seen, unique = set(), []
    for a, b in pairs:
        key = frozenset((a.run_id, b.run_id))
        if key not in seen:
            seen.add(key)
            unique.append((a, b))
    return unique


# ---------------------------------------------------------------------------------- probing


@dataclass
class _Session:
    """What the runs probed together share: their file paths, the feature extractor, and the
    samples drawn so far (a run's samples serve its partners too)."""

    cfg: GeneralizationConfig
    paths: dict  # run id -> its generalization.h5
    log: object
    dev: torch.device
    extractor: object = None
    samples: dict = field(default_factory=dict)  # run id -> samples tensor
    mean_images: dict = field(default_factory=dict)  # data sha256 -> its mean image

    def mean_image_of(self, run) -> torch.Tensor:
        """The data set's mean image, estimated on its held-out rows (the same for every run of
        the data set, so both runs of a pair are normalised alike); the training rows when it has
        none."""
        if run.data_sha256 not in self.mean_images:
            rows = run.test_indices if len(run.test_indices) else run.train_indices
            total = sum(run.images(rows[lo: lo + MEAN_CHUNK]).double().sum(0)
                        for lo in range(0, len(rows), MEAN_CHUNK))
            self.mean_images[run.data_sha256] = (total / len(rows)).float()
        return self.mean_images[run.data_sha256]

    def samples_of(self, run) -> torch.Tensor:
        """The run's samples: from memory, from its finished file of the same settings, or
        drawn now (and kept for its own turn)."""
        if run.run_id not in self.samples:
            stored = _stored_samples(self.paths[run.run_id], _identity(run, self.cfg))
            if stored is not None:
                self.samples[run.run_id] = stored
                return stored
            c = self.cfg
            self.log(f"{run.run_id}: sampling {c.samples} images ({c.sampler}"
                     + ("" if c.sampler == "kadkhodaie" else f", {c.steps} steps") + ")")
            self.samples[run.run_id] = generate(
                run.denoiser, sample_seeds(c.seed, c.samples), c.sampler, c.steps, c.batch,
                self.dev)
        return self.samples[run.run_id]


# Options that change no stored number: not part of a file's identity
NOT_IN_IDENTITY = ("batch", "threshold", "fid_weights", "pairs")


def _identity(run, cfg: GeneralizationConfig) -> dict:
    core = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_IDENTITY}
    return {"checkpoint_sha256": run.checkpoint_sha256, "data_sha256": run.data_sha256,
            "layout": fmt.LAYOUT, **core}


def _stored_samples(path: Path, identity: dict) -> torch.Tensor | None:
    if not up_to_date(path, identity):
        return None
    with h5py.File(path, "r") as f:
        return read_samples(f)


def _probe_psnr(run, s: _Session, out: ResumableH5) -> None:
    c = s.cfg
    group = out.begin(fmt.PSNR)
    group.create_dataset("sigmas", data=np.asarray(c.sigmas, np.float64))
    for source in fmt.PSNR_SOURCES:
        rows = probe_indices(run, c.images, source, c.seed)
        s.log(f"{run.run_id}: PSNR on {len(rows)} {source} images x {len(c.sigmas)} sigmas")
        values = denoising_psnr(run.denoiser.to(s.dev), run.images(rows), rows, c.sigmas,
                                c.seed, c.batch, s.dev)
        group.create_dataset(source, data=values)
        group.create_dataset(f"{source}_rows", data=rows)
    out.complete(group)


def _probe_neighbours(run, s: _Session, out: ResumableH5, samples: torch.Tensor) -> None:
    c = s.cfg
    group = out.begin(fmt.NEIGHBOURS)
    reference = TrainingRows(run)
    s.log(f"{run.run_id}: nearest neighbours of {len(samples)} samples among "
          f"{len(reference)} training images")
    l2_idx, l2_dist = mem.nearest_neighbours(samples, reference, mem.CARLINI_K, "l2",
                                             c.mean_removed, device=s.dev)
    cos_idx, cos_sim = mem.nearest_neighbours(samples, reference, 2, "cosine", c.mean_removed,
                                              device=s.dev)
    # contrast-robust: neighbours among normalised images, whatever --mean-removed says
    mean_image = s.mean_image_of(run)
    nor_idx, nor = mem.nearest_neighbours(samples, reference, 2, "cosine", device=s.dev,
                                          mean_image=mean_image)
    rows = reference.indices
    group.create_dataset("l2_rows", data=rows[l2_idx.numpy()])
    group.create_dataset("l2_distances", data=l2_dist.numpy())
    group.create_dataset("cosine_rows", data=rows[cos_idx.numpy()])
    group.create_dataset("cosine_similarities", data=cos_sim.numpy())
    group.create_dataset("nearest_image", data=to_uint8(run.images(rows[l2_idx[:, 0].numpy()])))
    group.create_dataset("mean_image", data=mean_image.numpy())
    group.create_dataset("normalised_rows", data=rows[nor_idx.numpy()])
    group.create_dataset("normalised_cosines", data=nor.numpy())
    group.create_dataset("nearest_image_normalised",
                         data=to_uint8(run.images(rows[nor_idx[:, 0].numpy()])))
    group.create_dataset("nn_ratio", data=mem.nn_ratio(l2_dist.numpy()))
    group.create_dataset("nn_ratio_normalised",
                         data=mem.nn_ratio(mem.normalised_distances(nor.numpy())))
    group.create_dataset("carlini_ratio", data=mem.carlini_ratio(l2_dist.numpy()))
    group.attrs["mean_removed"] = c.mean_removed
    out.complete(group)


def _probe_quality(run, s: _Session, out: ResumableH5, key: str, samples: torch.Tensor) -> None:
    group = out.begin(key)
    test = run.test_indices
    s.log(f"{run.run_id}: features of {len(samples)} samples and {len(test)} held-out images "
          f"({s.extractor.kind})")
    real = s.extractor(run.images(test))
    fake = s.extractor(samples)
    group.attrs["fid"] = fidm.fid(real, fake)
    group.attrs["kid"], group.attrs["kid_std"] = fidm.kid(real, fake, seed=s.cfg.seed)
    group.attrs["precision"], group.attrs["recall"] = fidm.precision_recall(real, fake)
    group.attrs["extractor"] = f"{s.extractor.kind}: {s.extractor.path}"
    group.attrs["n_real"], group.attrs["n_fake"] = len(real), len(fake)
    out.complete(group)


def _probe_pair(run, other, s: _Session, out: ResumableH5, samples: torch.Tensor) -> None:
    group = out.begin(fmt.pair_key(other.run_id))
    theirs = s.samples_of(other)
    group.create_dataset("cosine", data=mem.pair_cosine(samples, theirs, s.cfg.mean_removed))
    group.create_dataset("normalised", data=mem.pair_cosine(samples, theirs,
                                                         mean_image=s.mean_image_of(run)))
    group.attrs["other_split"], group.attrs["other_n"] = other.split, other.n
    out.complete(group)


def probe_run(run, partners: list, s: _Session, command: str = "") -> Path:
    """All groups of one run's generalization.h5."""
    c = s.cfg
    path = s.paths[run.run_id]
    attrs = {**run.provenance(), "command": command, "config": to_dict(c),
             "sample_sigmas": sampler_sigmas(c.sampler, run.denoiser, c.steps).tolist()}
    key = _quality_key(c)
    # reopen: a finished file of the same settings gains groups (new pairs or weights)
    with ResumableH5(path, attrs, _identity(run, c), reopen=True) as out:
        if not out.done(fmt.PSNR):
            _probe_psnr(run, s, out)
        stored = read_samples(out.file)
        if stored is not None:
            s.samples.setdefault(run.run_id, stored)
        else:
            write_samples(out.begin(fmt.SAMPLES), s.samples_of(run),
                          sample_seeds(c.seed, c.samples), c.sampler, c.steps)
            out.complete(out.file[fmt.SAMPLES])
        samples = s.samples[run.run_id]
        if not out.done(fmt.NEIGHBOURS):
            _probe_neighbours(run, s, out, samples)
        if key and not out.done(key):
            _probe_quality(run, s, out, key, samples)
        for other in partners:
            if not out.done(fmt.pair_key(other.run_id)):
                _probe_pair(run, other, s, out, samples)
    return path


def _quality_key(cfg: GeneralizationConfig) -> str | None:
    return fmt.quality_key(artifacts.sha256_file(cfg.fid_weights)) if cfg.fid_weights else None


@dataclass
class Plan:
    partners: list  # the runs this one is compared with, sample by sample
    session: _Session


class Generalization:
    """The generalization probe (protocol: probe.probes.protocol)."""

    name = "generalization"
    filename = artifacts.GENERALIZATION_H5
    table = artifacts.GENERALIZATION_TABLE

    def validate(self, cfg: GeneralizationConfig) -> None:
        validate(cfg)

    def training_images(self, cfg: GeneralizationConfig) -> str:
        return TRAINING_METRICS

    def plan(self, runs, cfg: GeneralizationConfig, paths: list[Path], log) -> list[Plan]:
        by_id = {run.run_id: run for run in runs}
        missing = [r for pair in cfg.pairs for r in pair if r not in by_id]
        if missing:
            raise ProbeError(f"--pair names a run that is not being probed: {missing[0]}")
        resolved = resolve_pairs(runs, [(by_id[a], by_id[b]) for a, b in cfg.pairs], log)
        extractor = fidm.load_feature_extractor(cfg.fid_weights) if cfg.fid_weights else None
        if extractor is not None and extractor.meta is not None:
            fid_digits.check_fits(extractor.meta, runs, log)
        session = _Session(cfg, {r.run_id: p for r, p in zip(runs, paths)}, log, device(),
                           extractor)
        return [Plan([b for a, b in resolved if a is run] + [a for a, b in resolved if b is run],
                     session) for run in runs]

    def probe(self, run, plan: Plan, cfg: GeneralizationConfig, path: Path, command: str,
              log) -> None:
        probe_run(run, plan.partners, plan.session, command)

    def tidy(self, runs, paths: list[Path], cfg: GeneralizationConfig) -> pd.DataFrame:
        key = _quality_key(cfg)
        return pd.concat([table_from_file(p, cfg.threshold, key) for p in paths],
                         ignore_index=True)


PROBE = Generalization()


